package relay

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/mqtt"
)

// pkt builds an MQTT packet from its first byte and body fields.
func pkt(first byte, fields ...[]byte) []byte {
	b := bytes.Join(fields, nil)
	out := []byte{first}
	for n := len(b); ; {
		c := byte(n % 128)
		if n /= 128; n > 0 {
			c |= 0x80
		}
		out = append(out, c)
		if n == 0 {
			break
		}
	}
	return append(out, b...)
}

// str is an MQTT string field.
func str(s string) []byte { return append([]byte{byte(len(s) >> 8), byte(len(s))}, s...) }

// pipe returns the two ends of a loopback TCP connection.
func pipe(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() { c, err := ln.Accept(); ch <- res{c, err} }()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { a.Close(); r.c.Close() })
	return a, r.c
}

// setup is one relayed connection: the test plays the client and the
// broker; the relay runs ServeConnect between them.
type setup struct {
	client, broker net.Conn
	done           chan struct{}
	mu             sync.Mutex
	counted        []string // "kind topic"
	bad            []error
}

func start(t *testing.T, r *Relay) *setup {
	s := &setup{done: make(chan struct{})}
	var relayClient, relayUp net.Conn
	s.client, relayClient = pipe(t)
	relayUp, s.broker = pipe(t)
	r.Count = func(kind, topic string) {
		s.mu.Lock()
		s.counted = append(s.counted, kind+" "+topic)
		s.mu.Unlock()
	}
	r.Bad = func(err error) {
		s.mu.Lock()
		s.bad = append(s.bad, err)
		s.mu.Unlock()
	}
	go func() {
		defer close(s.done)
		r.ServeConnect(context.Background(), relayClient, relayUp)
		relayClient.Close() // as the agent's stream handler does
		relayUp.Close()
	}()
	t.Cleanup(func() {
		s.client.Close()
		s.broker.Close()
		select {
		case <-s.done:
		case <-time.After(10 * time.Second):
			t.Error("relay did not end")
		}
	})
	return s
}

// read reads exactly n bytes from c.
func read(t *testing.T, c net.Conn, n int) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("reading %d bytes: %v (got % x)", n, err, b)
	}
	return b
}

// rest reads c to its end.
func rest(t *testing.T, c net.Conn) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading to the end: %v (got % x)", err, b)
	}
	return b
}

var (
	connect4  = pkt(0x10, str("MQTT"), []byte{4, 0x02, 0, 30}, str("cid"))
	connack4  = []byte{0x20, 2, 0, 0}
	connect5  = pkt(0x10, str("MQTT"), []byte{5, 0x02, 0, 30, 0}, str("cid"))
	connack5  = []byte{0x20, 3, 0, 0, 0}
	publishAB = pkt(0x30, str("a/b"), []byte("hi"))
	subscribe = pkt(0x82, []byte{0, 1}, str("x/#"), []byte{0})
)

func denyTopic(deny string) func(string, []string) bool {
	return func(_ string, topics []string) bool { return !slices.Contains(topics, deny) }
}

// TestRelayForwardsCountsAndDenies (MQTT 3.1.1): the CONNECT, an allowed
// PUBLISH and SUBSCRIBE reach the broker unchanged and are counted; the
// CONNACK reaches the client; a denied PUBLISH does not reach the broker,
// and ends both sides.
func TestRelayForwardsCountsAndDenies(t *testing.T) {
	s := start(t, &Relay{Authorize: denyTopic("secret")})
	s.client.Write(connect4)
	if got := read(t, s.broker, len(connect4)); !bytes.Equal(got, connect4) {
		t.Fatalf("broker got CONNECT % x", got)
	}
	s.broker.Write(connack4)
	if got := read(t, s.client, len(connack4)); !bytes.Equal(got, connack4) {
		t.Fatalf("client got CONNACK % x", got)
	}
	s.client.Write(publishAB)
	s.client.Write(subscribe)
	if got := read(t, s.broker, len(publishAB)+len(subscribe)); !bytes.Equal(got, append(slices.Clone(publishAB), subscribe...)) {
		t.Fatalf("broker got % x", got)
	}
	s.client.Write(pkt(0x30, str("secret"), []byte("x")))
	if got := rest(t, s.broker); len(got) != 0 {
		t.Fatalf("broker got % x after a denied PUBLISH", got)
	}
	if got := rest(t, s.client); len(got) != 0 {
		t.Fatalf("MQTT 3.1.1 client got % x; there is no DISCONNECT to send it", got)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if want := []string{"publish a/b", "subscribe x/#"}; !slices.Equal(s.counted, want) {
		t.Fatalf("counted %q, want %q", s.counted, want)
	}
}

// TestRelayDisconnectReasons (MQTT 5): a denied PUBLISH gets DISCONNECT
// 0x87 after the CONNACK; a malformed packet gets its reason and is
// reported as bad.
func TestRelayDisconnectReasons(t *testing.T) {
	for _, c := range []struct {
		name   string
		packet []byte
		reason byte
		bad    bool
	}{
		{"denied publish", pkt(0x30, str("secret"), []byte{0}, []byte("x")), 0x87, false},
		{"unset topic alias", pkt(0x30, str(""), []byte{3, 0x23, 0, 7}, []byte("x")), 0x82, true},
		{"too many filters", pkt(0x82, []byte{0, 1, 0}, bytes.Repeat(append(str("f"), 0), mqtt.MaxSubscribeFilters+1)), 0x97, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := start(t, &Relay{Authorize: denyTopic("secret")})
			s.client.Write(connect5)
			read(t, s.broker, len(connect5))
			s.client.Write(c.packet)
			s.broker.Write(connack5) // after the client's packet: the DISCONNECT must still follow it
			if got := rest(t, s.broker); len(got) != 0 {
				t.Fatalf("broker got % x", got)
			}
			want := append(slices.Clone(connack5), 0xe0, 1, c.reason)
			if got := rest(t, s.client); !bytes.Equal(got, want) {
				t.Fatalf("client got % x, want % x", got, want)
			}
			s.mu.Lock()
			defer s.mu.Unlock()
			if (len(s.bad) > 0) != c.bad {
				t.Fatalf("Bad called with %v", s.bad)
			}
		})
	}
}

// TestServeConnectRefusals: a CONNECT whose will topic is denied gets
// CONNACK return code 5 (3.1.1) and never reaches the broker; bytes that
// are not MQTT are reported as bad and never reach the broker.
func TestServeConnectRefusals(t *testing.T) {
	willConnect := pkt(0x10, str("MQTT"), []byte{4, 0x02 | 0x04, 0, 30}, str("cid"), str("w/t"), str("gone"))
	s := start(t, &Relay{Authorize: denyTopic("w/t")})
	s.client.Write(willConnect)
	if got := rest(t, s.client); !bytes.Equal(got, []byte{0x20, 2, 0, 5}) {
		t.Fatalf("denied will: client got % x", got)
	}
	if got := rest(t, s.broker); len(got) != 0 {
		t.Fatalf("denied will: broker got % x", got)
	}

	s = start(t, &Relay{})
	s.client.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
	s.client.SetReadDeadline(time.Now().Add(10 * time.Second))
	io.ReadAll(s.client) // the relay closes with the request unread: a reset is fine
	if got := rest(t, s.broker); len(got) != 0 {
		t.Fatalf("not MQTT: broker got % x", got)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.bad) != 1 {
		t.Fatalf("not MQTT: Bad called %d times", len(s.bad))
	}
}

// TestWillDeniedSinceIsDiscarded: a will allowed at CONNECT but denied by
// the time the client vanishes without DISCONNECT makes the relay send
// the broker a DISCONNECT (0x00), so the broker drops the will.
func TestWillDeniedSinceIsDiscarded(t *testing.T) {
	var deny atomic.Bool
	s := start(t, &Relay{Authorize: func(_ string, topics []string) bool {
		return !deny.Load() || !slices.Contains(topics, "w/t")
	}})
	willConnect := pkt(0x10, str("MQTT"), []byte{4, 0x02 | 0x04, 0, 30}, str("cid"), str("w/t"), str("gone"))
	s.client.Write(willConnect)
	read(t, s.broker, len(willConnect))
	s.broker.Write(connack4)
	read(t, s.client, len(connack4))
	deny.Store(true)
	s.client.Close()
	if got := rest(t, s.broker); !bytes.Equal(got, []byte{0xe0, 0}) {
		t.Fatalf("broker got % x, want a DISCONNECT", got)
	}
}

// connect5Keep is an MQTT 5 CONNECT with a keep alive of secs seconds.
func connect5Keep(secs byte) []byte {
	return pkt(0x10, str("MQTT"), []byte{5, 0x02, 0, secs, 0}, str("cid"))
}

// connack5Keep is an MQTT 5 CONNACK with a Server Keep Alive of secs.
func connack5Keep(secs byte) []byte { return []byte{0x20, 6, 0, 0, 3, 0x13, 0, secs} }

var pingreq = []byte{0xc0, 0}

// TestKeepAliveLimit: a client that sends nothing for 1.5 times its keep
// alive is disconnected as a broker would (MQTT 5: DISCONNECT 0x8D), also
// when the broker hangs; the CONNACK's Server Keep Alive replaces the
// CONNECT's; a client that pings in time stays; keep alive 0 is no limit.
func TestKeepAliveLimit(t *testing.T) {
	expiry := func(t *testing.T, connect, connack []byte) {
		var expired atomic.Int32
		s := start(t, &Relay{Expired: func() { expired.Add(1) }})
		began := time.Now()
		s.client.Write(connect)
		read(t, s.broker, len(connect))
		s.broker.Write(connack) // and the broker says no more
		if got := rest(t, s.broker); len(got) != 0 {
			t.Fatalf("broker got % x", got)
		}
		took := time.Since(began)
		want := append(slices.Clone(connack), 0xe0, 1, 0x8d)
		if got := rest(t, s.client); !bytes.Equal(got, want) {
			t.Fatalf("client got % x, want % x", got, want)
		}
		if took < 1500*time.Millisecond {
			t.Fatalf("a client with a keep alive of 1 s was disconnected after %v, before 1.5 s", took)
		}
		if expired.Load() != 1 {
			t.Fatalf("Expired called %d times", expired.Load())
		}
	}
	stays := func(t *testing.T, connect, connack []byte, every time.Duration, pings int) {
		s := start(t, &Relay{Expired: func() { t.Error("Expired called") }})
		s.client.Write(connect)
		read(t, s.broker, len(connect))
		s.broker.Write(connack)
		read(t, s.client, len(connack))
		for range pings {
			time.Sleep(every) // the client's pace, the behaviour under test
			if _, err := s.client.Write(pingreq); err != nil {
				t.Fatal(err)
			}
			read(t, s.broker, len(pingreq))
		}
	}
	t.Run("silent client", func(t *testing.T) {
		t.Parallel()
		expiry(t, connect5Keep(1), connack5)
	})
	t.Run("server keep alive shortens it", func(t *testing.T) {
		t.Parallel()
		expiry(t, connect5Keep(60), connack5Keep(1))
	})
	t.Run("pinging client stays", func(t *testing.T) {
		t.Parallel()
		stays(t, connect5Keep(1), connack5, time.Second, 3) // 3 s: twice the limit
	})
	t.Run("server keep alive 0 lifts it", func(t *testing.T) {
		t.Parallel()
		stays(t, connect5Keep(1), connack5Keep(0), 2*time.Second, 1)
	})
	t.Run("server keep alive lengthens it", func(t *testing.T) {
		t.Parallel()
		// The CONNECT's 1 s would end it at 1.5 s; the broker's 2 s allows 3 s.
		stays(t, connect5Keep(1), connack5Keep(2), 2*time.Second, 1)
	})
}

// TestKeepAliveLimitBrokerNotReading: a broker that takes none of the
// client's bytes for 1.5 times the keep alive ends the connection too.
func TestKeepAliveLimitBrokerNotReading(t *testing.T) {
	var expired atomic.Int32
	s := start(t, &Relay{Expired: func() { expired.Add(1) }})
	connect := pkt(0x10, str("MQTT"), []byte{4, 0x02, 0, 1}, str("cid"))
	s.client.Write(connect)
	read(t, s.broker, len(connect))
	s.broker.Write(connack4)
	read(t, s.client, len(connack4))
	big := pkt(0x30, str("a/b"), make([]byte, 64<<10))
	s.client.SetWriteDeadline(time.Now().Add(20 * time.Second))
	for i := 0; ; i++ { // the socket buffers fill, then the relay gives up
		if _, err := s.client.Write(big); err != nil {
			break
		}
		if i == 10000 {
			t.Fatal("the relay took 640 MiB for a broker that reads nothing")
		}
	}
	if expired.Load() != 1 {
		t.Fatalf("Expired called %d times", expired.Load())
	}
}

// TestKeepAliveEdges: a client cut off in the middle of a packet at its
// keep alive limit is expired, not malformed (MQTT 5: DISCONNECT 0x8D);
// the broker still gets the DISCONNECT that discards a will denied since
// the CONNECT, though the keep alive's write deadline has passed; a
// client that sends packets before the CONNACK takes the Server Keep
// Alive of 0 that comes in it.
func TestKeepAliveEdges(t *testing.T) {
	t.Run("cut off mid-packet", func(t *testing.T) {
		t.Parallel()
		var expired atomic.Int32
		s := start(t, &Relay{Expired: func() { expired.Add(1) }})
		s.client.Write(connect5Keep(1))
		read(t, s.broker, len(connect5Keep(1)))
		s.broker.Write(connack5)
		read(t, s.client, len(connack5))
		s.client.Write(publishAB[:3])
		if got := rest(t, s.broker); len(got) != 0 {
			t.Fatalf("broker got % x", got)
		}
		if got := rest(t, s.client); !bytes.Equal(got, []byte{0xe0, 1, 0x8d}) {
			t.Fatalf("client got % x, want DISCONNECT 0x8D", got)
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if expired.Load() != 1 || len(s.bad) != 0 {
			t.Fatalf("Expired called %d times, Bad with %v", expired.Load(), s.bad)
		}
	})
	t.Run("will denied since", func(t *testing.T) {
		t.Parallel()
		var deny atomic.Bool
		s := start(t, &Relay{Authorize: func(_ string, topics []string) bool {
			return !deny.Load() || !slices.Contains(topics, "w/t")
		}})
		withWill := pkt(0x10, str("MQTT"), []byte{4, 0x06, 0, 1}, str("cid"), str("w/t"), str("gone"))
		s.client.Write(withWill)
		read(t, s.broker, len(withWill))
		s.broker.Write(connack4)
		read(t, s.client, len(connack4))
		s.client.Write(pingreq)
		read(t, s.broker, len(pingreq))
		deny.Store(true)
		if got := rest(t, s.broker); !bytes.Equal(got, []byte{0xe0, 0}) {
			t.Fatalf("broker got % x at the keep alive limit, want the DISCONNECT that discards the will", got)
		}
	})
	t.Run("server keep alive 0 after pipelined packets", func(t *testing.T) {
		t.Parallel()
		s := start(t, &Relay{Expired: func() { t.Error("Expired called") }})
		s.client.Write(append(connect5Keep(1), pingreq...))
		read(t, s.broker, len(connect5Keep(1))+len(pingreq))
		s.broker.Write(connack5Keep(0))
		read(t, s.client, len(connack5Keep(0)))
		time.Sleep(2 * time.Second) // silent past the CONNECT's limit: the client's pace under test
		if _, err := s.client.Write(pingreq); err != nil {
			t.Fatal(err)
		}
		read(t, s.broker, len(pingreq))
	})
}

// TestKeepAliveCutPacketThenWillDisconnect: when the broker took none of
// a packet's bytes for the keep alive limit and the client's will has been
// denied since its CONNECT, the relay finishes the packet it cut off
// before the DISCONNECT that discards the will: the broker reads whole
// packets, the DISCONNECT last, not the DISCONNECT's bytes inside a
// PUBLISH (and then a connection that ends without one).
func TestKeepAliveCutPacketThenWillDisconnect(t *testing.T) {
	var deny atomic.Bool
	expired := make(chan struct{}, 1)
	s := start(t, &Relay{
		Authorize: func(_ string, topics []string) bool { return !deny.Load() || !slices.Contains(topics, "w/t") },
		Expired:   func() { expired <- struct{}{} },
	})
	withWill := pkt(0x10, str("MQTT"), []byte{4, 0x06, 0, 1}, str("cid"), str("w/t"), str("gone"))
	s.client.Write(withWill)
	read(t, s.broker, len(withWill))
	s.broker.Write(connack4)
	read(t, s.client, len(connack4))
	deny.Store(true)
	big := pkt(0x30, str("a/b"), make([]byte, 200<<10)) // several write pieces
	go func() {
		s.client.SetWriteDeadline(time.Now().Add(20 * time.Second))
		for i := 0; i < 1000; i++ { // until the relay gives up on the broker
			if _, err := s.client.Write(big); err != nil {
				return
			}
		}
	}()
	select {
	case <-expired:
	case <-time.After(20 * time.Second):
		t.Fatal("the relay did not give up on a broker that reads nothing")
	}
	// The broker reads again: everything it gets is whole packets.
	s.broker.SetReadDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(s.broker)
	var last []byte
	for {
		h, raw, _, err := mqtt.ReadPacket(br, 1<<20)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("broker read a broken packet after %d bytes of one: %v", len(raw), err)
		}
		if h.Type != mqtt.TypePublish && h.Type != mqtt.TypeDisconnect {
			t.Fatalf("broker got packet type %d", h.Type)
		}
		last = raw
	}
	if !bytes.Equal(last, []byte{0xe0, 0}) {
		t.Fatalf("broker's last packet % x, want the DISCONNECT that discards the will", last)
	}
}
