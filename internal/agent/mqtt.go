package agent

import (
	"context"
	"fmt"
	"net"
	"time"

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
	}, Expired: func() {
		a.cfg.Metrics.GetOrCreateCounter(fmt.Sprintf(`fogmesh_mqtt_keepalive_timeouts_total{service=%q}`, svc)).Inc()
		a.log.Debug("agent: MQTT connection ended at its keep alive limit", "service", svc)
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

// spliceIdle is the idle timeout of a spliced connection: the service's
// (0: none); on an mqtt port (proto), 1.5 times the CONNECT cn's keep
// alive if shorter (the inspecting relay keeps the keep alive itself). A
// client that sends nothing for that long is one a broker disconnects
// (MQTT 3.1.1 §3.1.2.10), and a splice that moved no byte either way for
// that long had a silent client. Only for MQTT 3.1 and 3.1.1: an MQTT 5
// broker may replace the keep alive in its CONNACK, which a splice does
// not read (the inspecting relay does: relay.Relay).
func spliceIdle(idle time.Duration, proto string, cn mqtt.Connect) time.Duration {
	limit := mqtt.KeepAliveLimit(cn.Keepalive)
	if proto != "mqtt" || cn.Version == 5 || limit == 0 {
		return idle
	}
	if idle <= 0 || limit < idle {
		return limit
	}
	return idle
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
