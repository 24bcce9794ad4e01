package agent

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/fogmesh/fogmesh/internal/mqtt"
)

// maxTopicSeries bounds the per-topic metric series an agent creates, so a
// client inventing topics cannot grow the agent's memory without end; later
// topics are counted under topic="other".
const maxTopicSeries = 200

// relayMQTT is the inspecting relay: client packets are read one by one,
// PUBLISH and SUBSCRIBE counted per topic (if count) and forwarded
// unchanged; the broker's bytes are copied back as they come. A malformed
// client packet ends the connection (an MQTT 5 client first gets
// DISCONNECT 0x81). check, when not nil, authorizes each PUBLISH and
// SUBSCRIBE: a denied one is not forwarded and ends the connection (an
// MQTT 5 client first gets DISCONNECT 0x87 Not authorized; MQTT 3.1.1 has
// no way to say why). Closing, rather than a failure SUBACK, also covers
// PUBLISH at QoS 0, which has no answer to carry a refusal.
func (a *Agent) relayMQTT(ctx context.Context, client, up net.Conn, version byte, svc string, count bool, check func(kind string, topics []string) bool) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { client.Close(); up.Close() })
	defer stop()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // brokerToClient
		defer wg.Done()
		defer cancel()
		io.Copy(client, up)
	}()
	defer wg.Wait()
	defer cancel()
	for {
		fh, raw, body, err := mqtt.ReadPacket(client, mqtt.MaxPacketSize)
		if err != nil {
			if err != io.EOF && ctx.Err() == nil {
				a.m.mqttBad.Inc()
				if version == 5 && len(raw) > 0 {
					client.Write([]byte{0xe0, 0x01, 0x81}) // DISCONNECT, malformed packet
				}
			}
			return
		}
		kind, topics, err := mqtt.Topics(fh, body, version)
		if err != nil {
			a.m.mqttBad.Inc()
			if version == 5 {
				client.Write([]byte{0xe0, 0x01, 0x81})
			}
			return
		}
		if check != nil && kind != "" && !check(kind, topics) {
			if version == 5 {
				client.Write([]byte{0xe0, 0x01, 0x87}) // DISCONNECT, not authorized
			}
			return
		}
		if count {
			for _, topic := range topics {
				a.countTopic(svc, kind, topic)
			}
		}
		if _, err := up.Write(raw); err != nil {
			return
		}
	}
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
