package relay

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"
)

// reflexiveCall runs UDPReflexive on pc in the background, against relayUDP.
type reflexiveCall struct {
	ap  netip.AddrPort
	err error
	end time.Time
}

func startReflexive(ctx context.Context, c *Client, pc net.PacketConn, relayUDP net.Addr) <-chan reflexiveCall {
	out := make(chan reflexiveCall, 1)
	go func() {
		ap, err := c.UDPReflexive(ctx, pc, relayUDP)
		out <- reflexiveCall{ap, err, time.Now()}
	}()
	return out
}

func waitCall(t *testing.T, ch <-chan reflexiveCall) reflexiveCall {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(20 * time.Second):
		t.Fatal("UDPReflexive did not return")
		return reflexiveCall{}
	}
}

// readRequest reads the next reflexive request on the silent relay socket
// and returns its token and sender.
func readRequest(t *testing.T, relay net.PacketConn) ([]byte, net.Addr) {
	t.Helper()
	relay.SetReadDeadline(time.Now().Add(20 * time.Second))
	buf := make([]byte, udpMaxPacket)
	n, from, err := relay.ReadFrom(buf)
	if err != nil {
		t.Fatalf("no request reached the relay: %v", err)
	}
	tok, err := ParseUDPRequest(buf[:n])
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), tok...), from
}

// assertNoReadDeadline: a read on pc waits for the next packet (sent here)
// instead of failing on a deadline UDPReflexive left behind.
func assertNoReadDeadline(t *testing.T, pc, from net.PacketConn) {
	t.Helper()
	got := make(chan error, 1)
	go func() {
		buf := make([]byte, 64)
		_, _, err := pc.ReadFrom(buf)
		got <- err
	}()
	if _, err := from.WriteTo([]byte("next"), pc.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("read after UDPReflexive: %v (a read deadline was left on the socket)", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("read after UDPReflexive got nothing")
	}
}

func listenUDP(t *testing.T) net.PacketConn {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc
}

// TestUDPReflexiveCancelEndsTheWait: ctx cancelled while UDPReflexive waits
// for an answer from a relay that stays silent: it returns the context's
// error at once, not when its 500 ms wait ends, and an answer that comes
// after the cancel is not taken. The socket keeps no read deadline.
func TestUDPReflexiveCancelEndsTheWait(t *testing.T) {
	f := newFixture(t, nil)
	x := f.node("site-a", "x")
	silent := listenUDP(t)

	t.Run("late answer dropped", func(t *testing.T) {
		pc := listenUDP(t)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		ch := startReflexive(ctx, x.c, pc, silent.LocalAddr())
		tok, from := readRequest(t, silent)
		cancel()
		// The answer arrives while the old code still sat in its wait.
		silent.WriteTo(appendUDPAnswer(nil, tok, netip.MustParseAddrPort("192.0.2.1:4000")), from)
		r := waitCall(t, ch)
		if !errors.Is(r.err, context.Canceled) {
			t.Fatalf("after cancel: %v, %v; want context.Canceled", r.ap, r.err)
		}
		assertNoReadDeadline(t, pc, silent)
	})

	t.Run("prompt", func(t *testing.T) {
		// The old code returned only when its 500 ms wait ended; 250 ms
		// leaves room for a slow scheduler, and one prompt return out of
		// three tries shows the wait is cut short.
		var took []time.Duration
		for try := 0; try < 3; try++ {
			pc := listenUDP(t)
			ctx, cancel := context.WithCancel(context.Background())
			ch := startReflexive(ctx, x.c, pc, silent.LocalAddr())
			readRequest(t, silent)
			start := time.Now()
			cancel()
			r := waitCall(t, ch)
			if !errors.Is(r.err, context.Canceled) {
				t.Fatalf("after cancel: %v, %v; want context.Canceled", r.ap, r.err)
			}
			assertNoReadDeadline(t, pc, silent)
			took = append(took, r.end.Sub(start))
			if took[try] < 250*time.Millisecond {
				return
			}
		}
		t.Fatalf("UDPReflexive returned %v after the cancel; want well under its 500 ms wait", took)
	})
}

// TestUDPReflexiveClearsDeadline: after an answer the socket has no read
// deadline either.
func TestUDPReflexiveClearsDeadline(t *testing.T) {
	f := newFixture(t, nil)
	x := f.node("site-a", "x")
	pc := listenUDP(t)
	ap, err := x.c.UDPReflexive(ctx20(t), pc, f.udp)
	if err != nil || ap.String() != pc.LocalAddr().String() {
		t.Fatalf("reflexive %v, %v; socket %s", ap, err, pc.LocalAddr())
	}
	assertNoReadDeadline(t, pc, listenUDP(t))
}
