package agent

import (
	"context"
	"fmt"
	"net"

	"github.com/fogmesh/fogmesh/internal/mqtt"
	"github.com/fogmesh/fogmesh/internal/mqtt/relay"
)

// maxTopicSeries bounds the per-topic metric series an agent creates, so a
// client inventing topics cannot grow the agent's memory without end; later
// topics are counted under topic="other".
const maxTopicSeries = 200

// willAllowed authorizes the will topic of a CONNECT as a PUBLISH.
func willAllowed(cn mqtt.Connect, check func(kind string, topics []string) bool) bool {
	return relay.WillAllowed(cn, check)
}

// mqttRelay is the relay of one connection to service svc: check (the
// topic rules of the policies selecting the service; nil: none), per-topic
// counting when count (mqttInspect), and the agent's bad-packet counter.
func (a *Agent) mqttRelay(svc string, count bool, check func(kind string, topics []string) bool) *relay.Relay {
	r := &relay.Relay{Authorize: check, Bad: func(err error) {
		a.m.mqttBad.Inc()
		a.log.Debug("agent: bad MQTT packet", "service", svc, "err", err)
	}}
	if count {
		r.Count = func(kind, topic string) { a.countTopic(svc, kind, topic) }
	}
	return r
}

// serveMQTTStream serves a mesh stream to a local broker whose topics are
// authorized here, the destination agent (relay.Relay.ServeConnect).
func (a *Agent) serveMQTTStream(ctx context.Context, stream, local net.Conn, svc string, check func(kind string, topics []string) bool) {
	a.mqttRelay(svc, false, check).ServeConnect(ctx, stream, local)
}

// relayMQTT relays a client whose CONNECT cn was read and forwarded
// (relay.Relay.Run).
func (a *Agent) relayMQTT(ctx context.Context, client, up net.Conn, cn mqtt.Connect, svc string, count bool, check func(kind string, topics []string) bool) {
	a.mqttRelay(svc, count, check).Run(ctx, client, up, cn)
}

func (a *Agent) countTopic(svc, kind, topic string) {
	key := svc + "\x00" + kind + "\x00" + topic
	c, ok := a.topicSeries.Load(key)
	if !ok {
		if a.topicCount.Add(1) > maxTopicSeries {
			a.topicCount.Add(-1)
			topic, key = "other", svc+"\x00"+kind+"\x00\x00other"
		}
		c, _ = a.topicSeries.LoadOrStore(key, a.cfg.Metrics.GetOrCreateCounter(
			fmt.Sprintf(`fogmesh_mqtt_messages_total{service=%q,kind=%q,topic=%q}`, svc, kind, topic)))
	}
	c.(interface{ Inc() }).Inc()
}
