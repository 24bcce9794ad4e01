package relay

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/netlab"
)

// TestPoolAcrossNATs runs the pool on the namespace topology (root only):
// two relays on the public network, a node in site C (outbound UDP
// dropped) and one in site A, each connecting out through its NAT with no
// inbound port. A opens a relayed session to C and bytes flow end to end.
// The home relay is closed: the session ends, and a new DialPeer goes
// through the second relay within failoverBound. Site A's uplink is
// pulled until the pool sees its relay lost, and plugged back: the pool
// reconnects by itself and a new session works.
func TestPoolAcrossNATs(t *testing.T) {
	lab := netlab.New(t)
	m := newMesh(t)
	var addrs []string
	for i, h := range []*netlab.Host{lab.Relay1, lab.Relay2} {
		ln, err := h.Listen("tcp", h.Addr.String()+":0")
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, m.relayOn(ln, []string{"r1", "r2"}[i], nil))
	}
	tune := func(h *netlab.Host) func(*PoolConfig) {
		return func(c *PoolConfig) {
			c.Dial = h.DialContext
			c.KeepAlive = 200 * time.Millisecond
			c.PingTimeout = time.Second
			c.DialTimeout = 2 * time.Second
			c.MinBackoff = 50 * time.Millisecond
			c.MaxBackoff = 500 * time.Millisecond
		}
	}
	a, _ := m.pool("site-a", "a1", addrs, tune(lab.A.Nodes[0]))
	c, cid := m.pool("site-c", "c1", addrs, tune(lab.C.Nodes[0]))
	e := serveEcho(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, p := range []*Pool{a, c} {
		if err := p.WaitConnected(ctx, 2); err != nil {
			t.Fatal(err)
		}
	}
	// Both came through their NATs: the relays saw the routers' public
	// addresses.
	for _, x := range []struct {
		p    *Pool
		site *netlab.Site
	}{{a, lab.A}, {c, lab.C}} {
		hc, _ := x.p.Home()
		if hc == nil {
			t.Fatalf("site %s: no home relay", x.site.Name)
		}
		ap, err := netip.ParseAddrPort(hc.Hello().Observed)
		if err != nil || ap.Addr() != x.site.PublicAddr {
			t.Fatalf("site %s: the relay saw %q, want the NAT's address %s", x.site.Name, hc.Hello().Observed, x.site.PublicAddr)
		}
	}

	home := homeOf(a)
	conn, via, err := a.DialPeer(ctx, cid)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := roundTrip(conn, marker); err != nil {
		t.Fatal(err)
	}
	if via != home || e.last() != home {
		t.Errorf("dialed through %s, accepted through %s; want A's home relay %s", via, e.last(), home)
	}

	// The home relay dies.
	m.srvs[home].Close()
	sessionEnds(t, conn)
	start := time.Now()
	conn2, via2, err := a.DialPeer(ctx, cid)
	took := time.Since(start)
	if err != nil {
		t.Fatalf("DialPeer after the home relay died: %v", err)
	}
	defer conn2.Close()
	t.Logf("DialPeer after the home relay died took %v", took)
	if took > failoverBound {
		t.Errorf("DialPeer after the home relay died took %v; want at most %v", took, failoverBound)
	}
	if want := other(addrs, home); via2 != want {
		t.Fatalf("dialed through %s after %s died; want %s", via2, home, want)
	}
	if err := roundTrip(conn2, marker+"-after-failover"); err != nil {
		t.Fatal(err)
	}
	conn2.Close()

	// Site A's cable is pulled until the pool notices, then plugged back.
	if err := lab.A.SetUplink(false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "A's pool to see the relay lost", func() bool { return !status(a, via2).Connected })
	if err := lab.A.SetUplink(true); err != nil {
		t.Fatal(err)
	}
	if err := a.WaitConnected(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if st := status(a, via2); st.Connects != 2 || !st.Home {
		t.Errorf("after the flap: %+v; want reconnected (2 connects) and home", st)
	}
	conn3, via3, err := a.DialPeer(ctx, cid)
	if err != nil {
		t.Fatalf("DialPeer after the flap: %v", err)
	}
	defer conn3.Close()
	if via3 != via2 {
		t.Errorf("dialed through %s after the flap; want %s", via3, via2)
	}
	if err := roundTrip(conn3, marker+"-after-flap"); err != nil {
		t.Fatal(err)
	}
}
