package relay

import (
	"context"
	"errors"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/netlab"
)

// TestUDPChannelAcrossNATs runs a UDP channel on the namespace topology
// (root only): a relay on relay 1's public address, a node in site A
// (endpoint-independent NAT) and one in site B (symmetric NAT, where
// punching fails: TestPunchNetlab), each connecting out with no inbound
// port. A binds a channel to B; the relay sees each side at its NAT's
// public address, and the mesh runs over QUIC end to end through it,
// both ways. With both NATs forgetting idle UDP mappings after 1 s, the
// channel's keepalives keep it working. Site C, which drops outbound UDP,
// learns at bind time, within its context, so it can fall back to TCP.
func TestUDPChannelAcrossNATs(t *testing.T) {
	lab := netlab.New(t)
	ca := newCA(t)
	srv, err := New(Config{Source: source(t, ca, "relay", "r1")})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := lab.Relay1.Listen("tcp", lab.Relay1.Addr.String()+":0")
	if err != nil {
		t.Fatal(err)
	}
	pc, err := lab.Relay1.ListenPacket("udp4", lab.Relay1.Addr.String()+":0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); srv.Serve(ln) }()
	go func() { defer wg.Done(); srv.ServeUDP(pc) }()
	t.Cleanup(func() { srv.Close(); wg.Wait() })

	join := func(h *netlab.Host, site, name string) *testNode {
		t.Helper()
		src := source(t, ca, site, name)
		c, err := DialClientVia(ctx20(t), ln.Addr().String(), src.ClientConfig(AuthorizeRelay(ca.TrustDomain())), h.DialContext)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		c.SetUDPOptions(UDPOptions{ListenPacket: h.ListenPacket, KeepAlive: 200 * time.Millisecond})
		t.Cleanup(func() { c.Close() })
		return &testNode{src: src, id: src.SVID().ID.String(), c: c}
	}
	a := join(lab.A.Nodes[0], "site-a", "a1")
	b := join(lab.B.Nodes[0], "site-b", "b1")
	c := join(lab.C.Nodes[0], "site-c", "c1")

	start := time.Now()
	chA, chB := bindPair(t, a, b)
	qa := startQUICOver(t, a.src, chA, newEchoWorkloads(t, lab.A.Nodes[0].Listen, lab.A.Nodes[0].DialContext))
	qb := startQUICOver(t, b.src, chB, newEchoWorkloads(t, lab.B.Nodes[0].Listen, lab.B.Nodes[0].DialContext))
	if err := qa.meshEcho(ctx20(t), marker+" from A"); err != nil {
		t.Fatal(err)
	}
	t.Logf("A -> symmetric B: first echo over the UDP channel %s after the bind began", time.Since(start))
	if err := qb.meshEcho(ctx20(t), marker+" from B"); err != nil {
		t.Fatal(err)
	}

	// The relay saw each side at its NAT's public address.
	srv.mu.Lock()
	rc := srv.udpChans[chA.id]
	srv.mu.Unlock()
	if rc == nil {
		t.Fatal("the relay has no channel")
	}
	portB := 0
	for side, site := range []*netlab.Site{lab.A, lab.B} {
		rc.mu.Lock()
		ap := rc.sides[side].addr
		rc.mu.Unlock()
		if !ap.IsValid() || ap.Addr() != site.PublicAddr {
			t.Fatalf("the relay sees site %s's side at %v, want its NAT's %s", site.Name, ap, site.PublicAddr)
		}
		if side == 1 {
			portB = int(ap.Port())
		}
	}

	// Both NATs forget idle UDP mappings after 1 s; for 3 s only the
	// channels' keepalives (every 200 ms) cross them, and a new stream
	// still works.
	for _, s := range []*netlab.Site{lab.A, lab.B} {
		err := s.NAT.Do(func() error {
			for _, f := range []string{"nf_conntrack_udp_timeout", "nf_conntrack_udp_timeout_stream"} {
				if err := os.WriteFile("/proc/sys/net/netfilter/"+f, []byte("1\n"), 0o644); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("site %s: %v", s.Name, err)
		}
	}
	since := time.Now()
	waitFor(t, "3 s of keepalives", func() bool {
		rc.mu.Lock()
		defer rc.mu.Unlock()
		return rc.last.After(since.Add(3 * time.Second))
	})
	if err := qa.meshEcho(ctx20(t), marker+" from A after 3 s"); err != nil {
		t.Fatal(err)
	}
	rc.mu.Lock()
	nowB := rc.sides[1].addr.Port()
	rc.mu.Unlock()
	t.Logf("B's NAT port for the channel: %d, then %d", portB, nowB)

	// Site C drops outbound UDP: the bind fails within its context.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start = time.Now()
	_, err = c.c.BindUDP(ctx, a.id)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("bind from site C: %v, want the context's deadline", err)
	}
	t.Logf("site C: %v after %s", err, time.Since(start))
	if n, err := lab.C.NAT.RuleCounter("filter", "FORWARD", netlab.RuleUDPDrop); err != nil || n == 0 {
		t.Fatalf("site C's router dropped %d UDP packets (%v): the failure is not the NAT's", n, err)
	}
}
