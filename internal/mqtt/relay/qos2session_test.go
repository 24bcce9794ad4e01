package relay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/mqtt"
)

// sessionRelays relays connections of persistent sessions to a broker,
// one relay per connection as the agent does, whose policies deny topic
// once deny is set.
type sessionRelays struct {
	addr, topic string
	deny        atomic.Bool
	sessions    mqtt.Releases // the agent's, shared by its relays
	onWithheld  func(packetID uint16)
}

// newRelay is the relay of one connection.
func (s *sessionRelays) newRelay() *Relay {
	return &Relay{Authorize: func(_ string, topics []string) bool {
		return !s.deny.Load() || !slices.Contains(topics, s.topic)
	}, Sessions: &s.sessions, Identity: "demo/plant\x00spiffe://test/sa/client", Withheld: s.onWithheld}
}

// connect relays a new client connection, sends the CONNECT of a
// persistent session (MQTT 3.1.1 CleanSession 0; MQTT 5 Clean Start 0,
// session expiry 300 s) for cid and reads the CONNACK.
func (s *sessionRelays) connect(t *testing.T, version byte, cid string) net.Conn {
	t.Helper()
	r := s.newRelay()
	client, relayClient := pipe(t)
	up, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.ServeConnect(context.Background(), relayClient, up)
		relayClient.Close()
		up.Close()
	}()
	t.Cleanup(func() {
		client.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("relay did not end")
		}
	})
	cn := pkt(0x10, str("MQTT"), []byte{4, 0x00, 0, 60}, str(cid))
	if version == 5 {
		cn = pkt(0x10, str("MQTT"), []byte{5, 0x00, 0, 60, 5, 0x11, 0, 0, 1, 0x2c}, str(cid))
	}
	client.Write(cn)
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if h, raw, _, err := mqtt.ReadPacket(client, 1<<20); err != nil || h.Type != mqtt.TypeConnack || raw[3] != 0 {
		t.Fatalf("CONNACK: %v % x %v", h, raw, err)
	}
	return client
}

// stage publishes a QoS 2 message with packet identifier 7 on a
// persistent session's connection, reads the PUBREC and drops the
// connection without the PUBREL, as a client that loses its network does.
func (s *sessionRelays) stage(t *testing.T, version byte, cid, payload string) {
	t.Helper()
	c := s.connect(t, version, cid)
	props := []byte{}
	if version == 5 {
		props = []byte{0}
	}
	c.Write(pkt(0x34, str(s.topic), []byte{0, 7}, props, []byte(payload)))
	if h, raw, _, err := mqtt.ReadPacket(c, 1<<20); err != nil || h.Type != mqtt.TypePubrec {
		t.Fatalf("PUBREC: %v % x %v", h, raw, err)
	}
	c.Close() // a reconnect before the broker saw the end takes the session over (MQTT §3.1.4)
}

// delivered reads what the subscriber gets within a second: the
// payloads of the PUBLISH packets carrying want.
func delivered(t *testing.T, sub net.Conn, want string) int {
	t.Helper()
	n := 0
	for {
		sub.SetReadDeadline(time.Now().Add(time.Second))
		h, raw, _, err := mqtt.ReadPacket(sub, 1<<20)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return n
		}
		if err != nil {
			t.Fatalf("subscriber: %v", err)
		}
		if h.Type == mqtt.TypePublish && bytes.Contains(raw, []byte(want)) {
			n++
		}
	}
}

// TestQoS2ReleasedOnLaterConnection: a client with a persistent session
// publishes QoS 2, gets the PUBREC and loses its connection; the policies
// deny the topic since; it reconnects and sends the PUBREL, as MQTT has it
// do (3.1.1 §4.4, MQTT 5 §4.4). The relay knew the topic only on the first
// connection and let the PUBREL through unchecked: mosquitto delivered the
// message denied by now. With the topic still allowed, the message is
// delivered exactly once.
func TestQoS2ReleasedOnLaterConnection(t *testing.T) {
	addr := brokerForTest(t)
	for _, version := range []byte{4, 5} {
		for _, denied := range []bool{true, false} {
			t.Run(fmt.Sprintf("v%d denied=%v", version, denied), func(t *testing.T) {
				s := &sessionRelays{addr: addr, topic: fmt.Sprintf("q2s/%d", time.Now().UnixNano())}
				sub := rawSubscriber(t, addr, s.topic)
				cid := fmt.Sprintf("q2s-%d-%v", version, denied)
				payload := "staged-" + cid
				s.stage(t, version, cid, payload)
				s.deny.Store(denied)

				c := s.connect(t, version, cid)
				c.Write([]byte{0x62, 2, 0, 7}) // PUBREL id 7
				if !denied {
					if h, raw, _, err := mqtt.ReadPacket(c, 1<<20); err != nil || h.Type != mqtt.TypePubcomp {
						t.Fatalf("PUBCOMP: %v % x %v", h, raw, err)
					}
					if n := delivered(t, sub, payload); n != 1 {
						t.Fatalf("the subscriber got the message %d times, want once", n)
					}
					return
				}
				// Denied: not forwarded, the connection ends (MQTT 5:
				// DISCONNECT 0x87).
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				got, _ := io.ReadAll(c)
				if want := map[byte][]byte{4: {}, 5: {0xe0, 1, 0x87}}[version]; !bytes.Equal(got, want) {
					t.Errorf("a denied PUBREL got % x, want % x and the end of the connection", got, want)
				}
				if n := delivered(t, sub, payload); n != 0 {
					t.Fatalf("the broker delivered the message on %s, denied since the PUBLISH, at a PUBREL on a later connection", s.topic)
				}
				// The client reconnects and sends its PUBREL again: the relay
				// answers it itself (unknownRelease) and the client goes on.
				c = s.connect(t, version, cid)
				c.Write([]byte{0x62, 2, 0, 7})
				want := map[byte][]byte{4: {0x70, 2, 0, 7}, 5: {0x70, 3, 0, 7, 0x92}}[version]
				if got := read(t, c, len(want)); !bytes.Equal(got, want) {
					t.Errorf("a PUBREL the relay cannot authorize got % x, want % x", got, want)
				}
				if n := delivered(t, sub, payload); n != 0 {
					t.Fatalf("the broker delivered the message on %s, denied since the PUBLISH", s.topic)
				}
			})
		}
	}
}

// TestQoS2UnknownRelease: the agent restarted (an empty Sessions) since the
// client's PUBLISH: its PUBREL cannot be authorized, even on a topic
// allowed, and is answered by the relay, not forwarded.
func TestQoS2UnknownRelease(t *testing.T) {
	addr := brokerForTest(t)
	for _, version := range []byte{4, 5} {
		t.Run(fmt.Sprintf("v%d", version), func(t *testing.T) {
			s := &sessionRelays{addr: addr, topic: fmt.Sprintf("q2u/%d", time.Now().UnixNano())}
			sub := rawSubscriber(t, addr, s.topic)
			cid := fmt.Sprintf("q2u-%d", version)
			s.stage(t, version, cid, "staged-"+cid)
			s.sessions = mqtt.Releases{} // the agent restarted
			var withheld atomic.Int32
			s.onWithheld = func(id uint16) {
				if id == 7 {
					withheld.Add(1)
				}
			}
			c := s.connect(t, version, cid)
			c.Write([]byte{0x62, 2, 0, 7})
			want := mqtt.Pubcomp(version, 7)
			if got := read(t, c, len(want)); !bytes.Equal(got, want) {
				t.Errorf("a PUBREL the relay cannot authorize got % x, want % x", got, want)
			}
			if n := delivered(t, sub, "staged-"+cid); n != 0 {
				t.Fatalf("the broker delivered a message whose topic the relay did not know")
			}
			if withheld.Load() != 1 {
				t.Errorf("Withheld called %d times for packet id 7, want 1", withheld.Load())
			}
			// The connection goes on.
			c.Write(pkt(0xc0)) // PINGREQ
			if got := read(t, c, 2); !bytes.Equal(got, []byte{0xd0, 0}) {
				t.Errorf("after the relay's PUBCOMP: got % x, want PINGRESP", got)
			}
		})
	}
}

// TestToClientAnswersBetweenPackets: the relay's answers reach the client
// between the broker's packets, however the broker's bytes are cut, and
// only after its CONNACK.
func TestToClientAnswersBetweenPackets(t *testing.T) {
	big := pkt(0x30, str("t"), bytes.Repeat([]byte("x"), 300)) // a 2-byte remaining length
	stream := slices.Concat(connack5, big, []byte{0xd0, 0}, pkt(0x50, []byte{0, 1}), big)
	answer := mqtt.Pubcomp(5, 9)
	for cut := 1; cut < len(stream); cut++ {
		var got bytes.Buffer
		w := &toClient{c: &got}
		w.answer(answer) // before the CONNACK: waits for it
		w.Write(stream[:cut])
		if cut >= len(connack5) {
			w.connacked()
		}
		w.answer(answer) // mid-stream: waits for the packet being written
		w.Write(stream[cut:])
		if cut < len(connack5) {
			w.connacked()
		}
		// Frame what the client got: the broker's packets whole, in order,
		// the two answers among them, none before the CONNACK.
		var broker []byte
		answers := 0
		for r := bytes.NewReader(got.Bytes()); r.Len() > 0; {
			_, raw, _, err := mqtt.ReadPacket(r, 1<<20)
			if err != nil {
				t.Fatalf("cut %d: the client got a stream that does not frame: %v", cut, err)
			}
			if bytes.Equal(raw, answer) {
				if len(broker) < len(connack5) {
					t.Fatalf("cut %d: an answer before the CONNACK", cut)
				}
				answers++
				continue
			}
			broker = append(broker, raw...)
		}
		if answers != 2 || !bytes.Equal(broker, stream) {
			t.Fatalf("cut %d: %d answers, broker bytes intact: %v", cut, answers, bytes.Equal(broker, stream))
		}
	}
}
