package relay

import (
	"net"
	"sync"
	"testing"
	"time"
)

// udpRelay starts a relay on loopback serving TCP and UDP.
func (m *mesh) udpRelay(name string) string {
	m.t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		m.t.Fatal(err)
	}
	var wg sync.WaitGroup
	m.t.Cleanup(wg.Wait) // after the relay's Close, which ends ServeUDP
	addr := m.relay(name, nil)
	srv := m.srvs[addr]
	wg.Add(1)
	go func() { defer wg.Done(); srv.ServeUDP(pc) }()
	return addr
}

// TestPoolBindsUDPChannel: a pool binds a UDP channel through its home
// relay, the peer's pool delivers it on UDPIncoming with that relay, and
// datagrams cross both ways. The home relay dies: the channel ends, and
// a new one is bound through the other relay.
func TestPoolBindsUDPChannel(t *testing.T) {
	m := newMesh(t)
	addrs := []string{m.udpRelay("r1"), m.udpRelay("r2")}
	x, _ := m.pool("site-a", "x", addrs, nil)
	y, yid := m.pool("site-b", "y", addrs, nil)
	ctx := ctx20(t)
	for _, p := range []*Pool{x, y} {
		if err := p.WaitConnected(ctx, 2); err != nil {
			t.Fatal(err)
		}
	}
	type opened struct {
		ch    *UDPChannel
		relay string
		err   error
	}
	take := func() <-chan opened {
		got := make(chan opened, 1)
		go func() {
			select {
			case in := <-y.UDPIncoming():
				ch, err := in.Open(ctx)
				got <- opened{ch, in.Relay, err}
			case <-ctx.Done():
				got <- opened{err: ctx.Err()}
			}
		}()
		return got
	}
	exchange := func(cx, cy *UDPChannel) {
		t.Helper()
		for _, c := range []*UDPChannel{cx, cy} {
			if err := c.WaitPeer(ctx); err != nil {
				t.Fatal(err)
			}
		}
		for _, d := range []struct{ from, to *UDPChannel }{{cx, cy}, {cy, cx}} {
			if _, err := d.from.WriteTo([]byte(marker), nil); err != nil {
				t.Fatal(err)
			}
			if got := readChan(t, d.to); got != marker {
				t.Fatalf("read %q", got)
			}
		}
	}

	home := homeOf(x)
	got := take()
	cx, via, err := x.BindUDP(ctx, yid)
	if err != nil {
		t.Fatal(err)
	}
	defer cx.Close()
	in := <-got
	if in.err != nil {
		t.Fatal(in.err)
	}
	defer in.ch.Close()
	if via != home || in.relay != home {
		t.Fatalf("bound through %s, opened through %s; want the home relay %s", via, in.relay, home)
	}
	exchange(cx, in.ch)

	m.srvs[home].Close()
	for _, c := range []*UDPChannel{cx, in.ch} {
		select {
		case <-c.Done():
		case <-time.After(20 * time.Second):
			t.Fatal("a channel through the dead relay is still open")
		}
	}
	got = take()
	cx2, via2, err := x.BindUDP(ctx, yid)
	if err != nil {
		t.Fatalf("BindUDP after the home relay died: %v", err)
	}
	defer cx2.Close()
	in2 := <-got
	if in2.err != nil {
		t.Fatal(in2.err)
	}
	defer in2.ch.Close()
	if want := other(addrs, home); via2 != want || in2.relay != want {
		t.Fatalf("bound through %s, opened through %s after %s died; want %s", via2, in2.relay, home, want)
	}
	exchange(cx2, in2.ch)
}
