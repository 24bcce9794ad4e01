package relay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/mqtt"
	"github.com/fogmesh/fogmesh/internal/proxy"
)

// Bugs a review found (session 19): each test's comment says what went
// wrong before its fix, and each fails without it.

// brokerForTest starts a mosquitto on a free loopback port.
func brokerForTest(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("mosquitto"); err != nil {
		t.Skip("no mosquitto")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	file := filepath.Join(t.TempDir(), "mosquitto.conf")
	os.WriteFile(file, []byte(fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\npersistence false\n", port)), 0o644)
	cmd := exec.Command("mosquitto", "-c", file)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return addr
		}
		if time.Now().After(deadline) {
			t.Fatalf("mosquitto did not start: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// rawSubscriber connects an MQTT 3.1.1 client straight to the broker
// and subscribes it to topic; it returns once the SUBACK came.
func rawSubscriber(t *testing.T, addr, topic string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.Write(pkt(0x10, str("MQTT"), []byte{4, 0x02, 0, 60}, str("review-sub")))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if h, _, _, err := mqtt.ReadPacket(c, 1<<20); err != nil || h.Type != mqtt.TypeConnack {
		t.Fatalf("subscriber CONNACK: %v %v", h, err)
	}
	c.Write(pkt(0x82, []byte{0, 1}, str(topic), []byte{0}))
	if h, _, _, err := mqtt.ReadPacket(c, 1<<20); err != nil || h.Type != mqtt.TypeSuback {
		t.Fatalf("subscriber SUBACK: %v %v", h, err)
	}
	return c
}

// TestWillDeniedSinceDisconnectBrokerRefuses: the relay lets a
// DISCONNECT through that it reads as well-formed (and so stops guarding
// the will) but that mosquitto refuses as a protocol error or malformed,
// which ends the connection with an error: the broker publishes the will
// the policies deny by now.
func TestWillDeniedSinceDisconnectBrokerRefuses(t *testing.T) {
	addr := brokerForTest(t)
	for _, c := range []struct {
		name       string
		disconnect []byte
	}{
		{"plain (control)", []byte{0xe0, 0}},
		{"session expiry set though CONNECT had 0", pkt(0xe0, []byte{0x00, 5, 0x11, 0, 0, 0, 1})},
		{"reason string with a control character", pkt(0xe0, []byte{0x00, 5, 0x1f}, str("\x01x"))},
	} {
		t.Run(c.name, func(t *testing.T) {
			topic := "w/" + fmt.Sprint(time.Now().UnixNano())
			sub := rawSubscriber(t, addr, topic)

			deny, client, done := relayTo(t, addr, topic)
			// MQTT 5 CONNECT, clean start, no properties (session expiry 0), will on topic.
			cn := pkt(0x10, str("MQTT"), []byte{5, 0x02 | 0x04, 0, 60, 0}, str("review-will"), []byte{0}, str(topic), str("gone"))
			client.Write(cn)
			client.SetReadDeadline(time.Now().Add(10 * time.Second))
			if h, _, _, err := mqtt.ReadPacket(client, 1<<20); err != nil || h.Type != mqtt.TypeConnack {
				t.Fatalf("CONNACK: %v %v", h, err)
			}
			deny.Store(true) // the policies change: the will topic is denied now
			client.Write(c.disconnect)
			io.Copy(io.Discard, client)
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("relay did not end")
			}
			// The will, if the broker publishes it, comes at once; wait
			// for it up to a deadline.
			sub.SetReadDeadline(time.Now().Add(time.Second))
			h, raw, _, err := mqtt.ReadPacket(sub, 1<<20)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return // no will: right
			}
			if err == nil && h.Type == mqtt.TypePublish && bytes.Contains(raw, []byte("gone")) {
				t.Fatalf("the broker published the will denied since (% x) after the client's DISCONNECT % x", raw, c.disconnect)
			}
			t.Fatalf("subscriber: %v % x", err, raw)
		})
	}
}

// TestQoS2ReleasedAfterDenied: mosquitto delivers an incoming QoS 2
// message when the PUBREL comes (MQTT 5 §4.3.3 leaves it the choice), not
// at the PUBLISH. The relay authorizes the PUBLISH and lets every PUBREL
// through unchecked, so a client stages a message on a topic while it is
// allowed and has it published, at a moment it picks, after the policies
// deny the topic.
func TestQoS2ReleasedAfterDenied(t *testing.T) {
	addr := brokerForTest(t)
	topic := "q2/" + fmt.Sprint(time.Now().UnixNano())
	sub := rawSubscriber(t, addr, topic)

	deny, client, done := relayTo(t, addr, topic)
	t.Cleanup(func() {
		client.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("relay did not end")
		}
	})
	client.Write(pkt(0x10, str("MQTT"), []byte{4, 0x02, 0, 60}, str("review-q2")))
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if h, _, _, err := mqtt.ReadPacket(client, 1<<20); err != nil || h.Type != mqtt.TypeConnack {
		t.Fatalf("CONNACK: %v %v", h, err)
	}
	client.Write(pkt(0x34, str(topic), []byte{0, 7}, []byte("staged"))) // PUBLISH QoS 2, id 7
	if h, raw, _, err := mqtt.ReadPacket(client, 1<<20); err != nil || h.Type != mqtt.TypePubrec {
		t.Fatalf("PUBREC: %v % x %v", h, raw, err)
	}
	// Nothing reaches the subscriber yet: mosquitto holds it until PUBREL.
	sub.SetReadDeadline(time.Now().Add(time.Second))
	if _, raw, _, err := mqtt.ReadPacket(sub, 1<<20); err == nil || !errors.As(err, new(net.Error)) {
		t.Fatalf("subscriber got % x (%v) before the PUBREL", raw, err)
	}
	deny.Store(true)                    // the policies change: the topic is denied now
	client.Write([]byte{0x62, 2, 0, 7}) // PUBREL id 7
	sub.SetReadDeadline(time.Now().Add(time.Second))
	h, raw, _, err := mqtt.ReadPacket(sub, 1<<20)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return // not delivered: right
	}
	if err == nil && h.Type == mqtt.TypePublish && bytes.Contains(raw, []byte("staged")) {
		t.Fatalf("the message was published on %s, denied since the PUBLISH, at the client's PUBREL (% x)", topic, raw)
	}
	t.Fatalf("subscriber: %v % x", err, raw)
}

// willGuardRun runs Run on a will-carrying MQTT 3.1.1 connection (keep
// alive 0), denies the will after the CONNACK, lets end end the
// connection and returns what the broker read to the end.
func willGuardRun(t *testing.T, idle time.Duration, end func(cancel context.CancelFunc)) []byte {
	t.Helper()
	var deny atomic.Bool
	r := &Relay{Authorize: func(_ string, topics []string) bool {
		return !deny.Load() || !slices.Contains(topics, "w/t")
	}}
	client, relayClient := pipe(t)
	relayUp, broker := pipe(t)
	willConnect := pkt(0x10, str("MQTT"), []byte{4, 0x02 | 0x04, 0, 0}, str("cid"), str("w/t"), str("gone"))
	cn, _, err := mqtt.ReadConnect(bytes.NewReader(willConnect))
	if err != nil {
		t.Fatal(err)
	}
	broker.Write(connack4) // the caller forwarded the CONNECT; the broker answers
	c, u := proxy.WithIdleTimeout(relayClient, relayUp, idle)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Run(ctx, c, u, cn)
		relayClient.Close()
		relayUp.Close()
	}()
	read(t, client, len(connack4))
	deny.Store(true)
	end(cancel)
	got := rest(t, broker)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("relay did not end")
	}
	return got
}

// TestWillGuardOnEveryEnd: the relay promises to send the broker a
// DISCONNECT when the will is denied by now "whoever ends the
// connection", but when its context ends it (the agent's listener or the
// agent stopping), or the idle timeout fires first on the broker's side,
// the AfterFunc closes both connections and closeRelay returns before the
// guard: the broker publishes the denied will.
func TestWillGuardOnEveryEnd(t *testing.T) {
	t.Run("context canceled", func(t *testing.T) {
		got := willGuardRun(t, 0, func(cancel context.CancelFunc) { cancel() })
		if !bytes.Equal(got, []byte{0xe0, 0}) {
			t.Fatalf("broker got % x, want a DISCONNECT (e0 00) to drop the will denied since", got)
		}
	})
	t.Run("idle timeout", func(t *testing.T) {
		misses := 0
		const runs = 8
		for range runs {
			got := willGuardRun(t, 200*time.Millisecond, func(context.CancelFunc) {})
			if !bytes.Equal(got, []byte{0xe0, 0}) {
				misses++
			}
		}
		if misses > 0 {
			t.Fatalf("the idle timeout ended the connection without the will's DISCONNECT in %d of %d runs", misses, runs)
		}
	})
}

// relayTo runs a relay from a client (returned) to the broker at addr
// whose policies deny topic once deny is set; done closes when it ends.
func relayTo(t *testing.T, addr, topic string) (deny *atomic.Bool, client net.Conn, done chan struct{}) {
	t.Helper()
	deny = &atomic.Bool{}
	r := &Relay{Authorize: func(_ string, topics []string) bool {
		return !deny.Load() || !slices.Contains(topics, topic)
	}}
	client, relayClient := pipe(t)
	up, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	done = make(chan struct{})
	go func() {
		defer close(done)
		r.ServeConnect(context.Background(), relayClient, up)
		relayClient.Close()
		up.Close()
	}()
	return deny, client, done
}
