package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fogmesh/fogmesh/internal/mqtt"
	"github.com/fogmesh/fogmesh/internal/mqtt/relay"
)

// maxTopicSeries bounds the per-topic metric series an agent creates, so a
// client inventing topics cannot grow the agent's memory without end; later
// topics are counted under topic="other".
const maxTopicSeries = 200

// mqttState is the agent's MQTT state beyond one connection.
type mqttState struct {
	// topicSeries/topicCount: the per-topic counters (countTopic).
	topicSeries sync.Map
	topicCount  atomic.Int64
	// sessions keeps the topics of unreleased QoS 2 messages for the later
	// connections of persistent sessions (relay.Relay.Sessions).
	sessions mqtt.Releases
}

// willAllowed authorizes the will topic of a CONNECT as a PUBLISH.
func willAllowed(cn mqtt.Connect, check func(kind string, topics []string) bool) bool {
	return relay.WillAllowed(cn, check)
}

// mqttRelay is the relay of one connection to service svc from a client
// of workload identity source ("" if none): check (the topic rules of the
// policies selecting the service; nil: none), per-topic counting when
// count (mqttInspect), and the agent's bad-packet counter.
func (a *Agent) mqttRelay(svc, source string, count bool, check func(kind string, topics []string) bool) *relay.Relay {
	r := &relay.Relay{Authorize: check, Sessions: &a.mq.sessions, Identity: svc + "\x00" + source, Withheld: func(id uint16) {
		a.cfg.Metrics.GetOrCreateCounter(fmt.Sprintf(`fogmesh_mqtt_pubrel_withheld_total{service=%q}`, svc)).Inc()
		a.log.Info("agent: MQTT PUBREL of a QoS 2 message whose topic is unknown here kept from the broker", "service", svc, "source", source, "packet_id", id)
	}, Bad: func(err error) {
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
func (a *Agent) serveMQTTStream(ctx context.Context, stream, local net.Conn, svc, source string, check func(kind string, topics []string) bool) {
	a.mqttRelay(svc, source, false, check).ServeConnect(ctx, stream, local)
}

// relayMQTT relays a client whose CONNECT cn was read and forwarded
// (relay.Relay.Run).
func (a *Agent) relayMQTT(ctx context.Context, client, up net.Conn, cn mqtt.Connect, svc, source string, count bool, check func(kind string, topics []string) bool) {
	a.mqttRelay(svc, source, count, check).Run(ctx, client, up, cn)
}

// spliceIdle is the idle timeout of a spliced connection: the service's
// (idle; 0: none), and on an mqtt port (t) 1.5 times the keep alive
// in force if shorter (the inspecting relay keeps the keep alive itself).
// A client that sends nothing for that long is one a broker disconnects
// (MQTT 3.1.1 and 5 §3.1.2.10), and a splice that moved no byte either way
// for that long had a silent client. The keep alive in force is the
// CONNECT cn's, or for MQTT 5 the Server Keep Alive of the broker's
// CONNACK, which spliceIdle relays to the client first (connackFirst). An
// error ends the connection.
func (a *Agent) spliceIdle(ctx context.Context, client, up net.Conn, idle time.Duration, t listenTarget, cn mqtt.Connect) (time.Duration, error) {
	if t.proto != "mqtt" {
		return idle, nil
	}
	keep := cn.Keepalive
	if cn.Version == 5 {
		secs, ok, err := connackFirst(ctx, client, up, cn, shorterIdle(idle, mqtt.KeepAliveLimit(cn.Keepalive)))
		if err != nil {
			a.log.Debug("agent: MQTT connection ended before the broker's CONNACK", "service", t.svc, "err", err)
		}
		if err != nil || !ok {
			return idle, err
		}
		keep = secs
	}
	return shorterIdle(idle, mqtt.KeepAliveLimit(keep)), nil
}

// shorterIdle is the shorter of two timeouts, where 0 is none.
func shorterIdle(a, b time.Duration) time.Duration {
	if a <= 0 || (b > 0 && b < a) {
		return b
	}
	return a
}

// connackFirst relays the broker's first packet on up to the client of a
// spliced MQTT 5 connection whose CONNECT cn was sent, and returns the keep
// alive in force after it: the CONNACK's Server Keep Alive, else cn's
// (MQTT 5 §3.2.2.3.14). ok is false when that packet is no CONNACK (an
// enhanced authentication's AUTH comes first) or its bytes cannot be
// framed: the splice then carries the rest as it is. The client's packets
// wait in its socket meanwhile, as a broker answers a CONNECT without
// them. err (the broker closed, or sent nothing within wait; 0: no limit)
// ends the connection.
func connackFirst(ctx context.Context, client, up net.Conn, cn mqtt.Connect, wait time.Duration) (keep uint16, ok bool, err error) {
	if wait > 0 {
		up.SetReadDeadline(time.Now().Add(wait))
	}
	stop := context.AfterFunc(ctx, func() { up.SetReadDeadline(aLongTimeAgo) }) // agent shutdown
	h, raw, body, err := mqtt.ReadPacket(up, mqtt.MaxPacketSize)
	stop()
	up.SetReadDeadline(time.Time{})
	if len(raw) > 0 {
		if _, werr := client.Write(raw); werr != nil {
			return 0, false, werr
		}
	}
	var pe *mqtt.ProtocolError
	switch {
	case errors.As(err, &pe):
		return 0, false, nil // not framed here: the splice forwards the rest
	case err != nil:
		return 0, false, fmt.Errorf("agent: waiting for the broker's CONNACK: %w", err)
	case h.Type != mqtt.TypeConnack:
		return 0, false, nil
	}
	if secs, ok := mqtt.ServerKeepAlive(body); ok {
		return secs, true, nil
	}
	return cn.Keepalive, true, nil
}

func (a *Agent) countTopic(svc, kind, topic string) {
	key := svc + "\x00" + kind + "\x00" + topic
	c, ok := a.mq.topicSeries.Load(key)
	if !ok {
		if a.mq.topicCount.Add(1) > maxTopicSeries {
			a.mq.topicCount.Add(-1)
			topic, key = "other", svc+"\x00"+kind+"\x00\x00other"
		}
		c, _ = a.mq.topicSeries.LoadOrStore(key, a.cfg.Metrics.GetOrCreateCounter(
			fmt.Sprintf(`fogmesh_mqtt_messages_total{service=%q,kind=%q,topic=%q}`, svc, kind, topic)))
	}
	c.(interface{ Inc() }).Inc()
}
