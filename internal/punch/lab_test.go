package punch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/netlab"
	"github.com/fogmesh/fogmesh/internal/relay"
	"github.com/fogmesh/fogmesh/internal/transport"
)

// labNode is one node of the lab: its identity, relay client and punching
// socket, all made inside its namespace.
type labNode struct {
	host      *netlab.Host
	site      *netlab.Site
	src       *identity.Source
	name      string
	id        string
	rc        *relay.Client
	pc        net.PacketConn
	tr        *quic.Transport
	p         *Puncher
	cands     Candidates
	gatherErr error
	gatherDur time.Duration
}

// labRelay is a relay serving on relay 1's public address.
type labRelay struct {
	ca  *identity.CA
	tcp string
	udp *net.UDPAddr
}

func newCA(t *testing.T) *identity.CA {
	t.Helper()
	ca, err := identity.OpenCA(identity.CAConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// source is a node identity issued by ca as an agent gets one.
func source(t *testing.T, ca *identity.CA, site, node string) *identity.Source {
	t.Helper()
	src, err := ca.NodeSource(site, node)
	if err != nil {
		t.Fatal(err)
	}
	return src
}

func startLabRelay(t *testing.T, lab *netlab.Lab) *labRelay {
	t.Helper()
	r := &labRelay{ca: newCA(t)}
	srv, err := relay.New(relay.Config{Source: source(t, r.ca, "relay", "r1")})
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
	r.tcp, r.udp = ln.Addr().String(), pc.LocalAddr().(*net.UDPAddr)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); srv.Serve(ln) }()
	go func() { defer wg.Done(); srv.ServeUDP(pc) }()
	t.Cleanup(func() { srv.Close(); wg.Wait() })
	return r
}

// join connects a node in h's namespace to the relay and gathers its
// candidates; a gather error is kept in gatherErr (site C's is expected).
func (r *labRelay) join(t *testing.T, site *netlab.Site, h *netlab.Host, name string) *labNode {
	t.Helper()
	n := &labNode{host: h, site: site, name: name, src: source(t, r.ca, site.Name, name)}
	n.id = n.src.SVID().ID.String()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	err := h.Do(func() error {
		var err error
		n.rc, err = relay.DialClient(ctx, r.tcp, n.src.ClientConfig(relay.AuthorizeRelay(r.ca.TrustDomain())))
		if err != nil {
			return err
		}
		n.pc, err = net.ListenPacket("udp4", "0.0.0.0:0")
		if err != nil {
			return err
		}
		start := time.Now()
		n.cands, n.gatherErr = Gather(ctx, n.rc, n.pc, r.udp, 0)
		n.gatherDur = time.Since(start)
		return nil
	})
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	t.Cleanup(func() { n.rc.Close() })
	n.tr = transport.NewQUICTransport(n.pc)
	n.p, err = New(Config{Transport: n.tr, Self: n.id, KeepAlive: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.p.Close(); n.tr.Close(); n.pc.Close() })
	return n
}

type punchResult struct {
	path *Path
	err  error
	took time.Duration
}

// punchPair has x ask the relay for an introduction to y while y takes
// it, and returns both ends' results.
func punchPair(t *testing.T, x, y *labNode) (xr, yr punchResult) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	done := make(chan punchResult, 1)
	go func() {
		start := time.Now()
		pa, err := y.p.Accept(ctx, y.rc)
		done <- punchResult{pa, err, time.Since(start)}
	}()
	start := time.Now()
	in, err := x.rc.Introduce(ctx, y.id, x.cands.Strings())
	if err != nil {
		t.Fatalf("introduce: %v", err)
	}
	introduced := time.Since(start)
	pa, err := x.p.Punch(ctx, in)
	xr = punchResult{pa, err, time.Since(start) - introduced}
	yr = <-done
	for _, r := range []punchResult{xr, yr} {
		if r.path != nil {
			t.Cleanup(func() { r.path.Close() })
		}
	}
	t.Logf("%s -> %s: %v in %s (%v); back: %v in %s (%v)", x.id, y.id, pathAddr(xr.path), xr.took, xr.err, pathAddr(yr.path), yr.took, yr.err)
	return xr, yr
}

func pathAddr(p *Path) string {
	if p == nil {
		return "-"
	}
	return p.MeshAddr()
}

// echoDialer is the serving node's workloads: every stream goes to an
// echo server inside its namespace; it records the peers it served.
type echoDialer struct {
	h    *netlab.Host
	addr string
	mu   sync.Mutex
	seen []spiffeid.ID
}

func (d *echoDialer) DialLocal(ctx context.Context, h transport.Header) (net.Conn, error) {
	if p, ok := transport.PeerFromContext(ctx); ok {
		d.mu.Lock()
		d.seen = append(d.seen, p.ID)
		d.mu.Unlock()
	}
	return d.h.DialContext(ctx, "tcp", d.addr)
}

// meshRoundTrip runs the QUIC carrier over the punched sockets: the side
// whose path Dials opens a mesh stream to the other's QUICServer, which
// relays it to an echo server; bytes go there and back.
func meshRoundTrip(t *testing.T, a, b *labNode, pa, pb *Path) {
	t.Helper()
	if pa.Dials == pb.Dials {
		t.Fatalf("both ends Dials=%v: roles not decided", pa.Dials)
	}
	dialer, server, path := a, b, pa
	if pb.Dials {
		dialer, server, path = b, a, pb
	}
	ln, err := server.host.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	d := &echoDialer{h: server.host, addr: ln.Addr().String()}
	srv, err := transport.NewQUICServer(transport.QUICServerConfig{Transport: server.tr, Dialer: d,
		TLS: server.src.ServerConfig(identity.AuthorizeNode(), identity.ALPNMesh)})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(context.Background()) }()
	t.Cleanup(func() { srv.Close(); <-served })

	want := spiffeid.RequireFromString(server.id)
	cli, err := transport.NewQUICClient(transport.QUICClientConfig{Transport: dialer.tr,
		TLS:        dialer.src.ClientConfig(identity.AuthorizeNode(), identity.ALPNMesh),
		SourceNode: dialer.name, DialTimeout: 10 * time.Second,
		PeerID: func(addr string) spiffeid.ID {
			if addr == path.MeshAddr() {
				return want
			}
			return spiffeid.ID{}
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	conn, err := cli.Dial(t.Context(), path.MeshAddr(), transport.Header{Namespace: "default", Service: "echo", Endpoint: "e1", Port: "tcp"})
	if err != nil {
		t.Fatalf("QUIC over the punched path: %v", err)
	}
	defer conn.Close()
	msg := fmt.Sprintf("hello from %s over a punched path", dialer.id)
	if _, err := conn.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(conn, got); err != nil || string(got) != msg {
		t.Fatalf("echo = %q, %v; want %q", got, err, msg)
	}
	if conn.RemoteAddr().String() != path.MeshAddr() {
		t.Errorf("QUIC peer address %s, want the punched %s", conn.RemoteAddr(), path.MeshAddr())
	}
	if conn.LocalAddr().String() != dialer.pc.LocalAddr().String() {
		t.Errorf("QUIC runs from %s, want the punching socket %s", conn.LocalAddr(), dialer.pc.LocalAddr())
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.seen) != 1 || d.seen[0].String() != dialer.id {
		t.Errorf("the server saw peers %v, want %s", d.seen, dialer.id)
	}
}

// wantPunched checks both ends punched, within the deadline, to the
// address the other end is seen at.
func wantPunched(t *testing.T, x, y *labNode, xr, yr punchResult, viaPublic bool) {
	t.Helper()
	for _, c := range []struct {
		r        punchResult
		from, to *labNode
	}{{xr, x, y}, {yr, y, x}} {
		if c.r.err != nil {
			t.Fatalf("%s: %v", c.from.id, c.r.err)
		}
		if c.r.took > DefaultTimeout {
			t.Errorf("%s punched in %s, over the %s deadline", c.from.id, c.r.took, DefaultTimeout)
		}
		wantAddr := c.to.host.Addr
		if viaPublic {
			wantAddr = c.to.site.PublicAddr
		}
		if c.r.path.Addr.Addr() != wantAddr || c.r.path.Peer != c.to.id {
			t.Errorf("%s: path to %s at %s, want %s at %s", c.from.id, c.r.path.Peer, c.r.path.Addr, c.to.id, wantAddr)
		}
	}
}

// TestPunchNetlab punches between the lab's sites behind real NAT routers,
// with a real relay on the public network: endpoint-independent NATs
// punch (and carry a QUIC mesh stream), two nodes behind one NAT punch on
// their LAN addresses, a symmetric NAT fails within the deadline, and a
// site that drops UDP learns so fast, at gathering.
func TestPunchNetlab(t *testing.T) {
	lab := netlab.New(t)
	r := startLabRelay(t, lab)
	a1 := r.join(t, lab.A, lab.A.Nodes[0], "a1")
	b1 := r.join(t, lab.B, lab.B.Nodes[0], "b1")
	c1 := r.join(t, lab.C, lab.C.Nodes[0], "c1")
	l1 := r.join(t, lab.LAN, lab.LAN.Nodes[0], "l1")
	l2 := r.join(t, lab.LAN, lab.LAN.Nodes[1], "l2")
	for _, n := range []*labNode{a1, b1, l1, l2} {
		if n.gatherErr != nil {
			t.Fatalf("%s: gather: %v", n.id, n.gatherErr)
		}
		if n.cands.Reflexive.Addr() != n.site.PublicAddr || len(n.cands.Local) != 1 || n.cands.Local[0].Addr() != n.host.Addr {
			t.Fatalf("%s: candidates %+v, want local %s, reflexive on %s", n.id, n.cands, n.host.Addr, n.site.PublicAddr)
		}
	}

	t.Run("LAN-to-A-with-QUIC", func(t *testing.T) {
		xr, yr := punchPair(t, l1, a1)
		wantPunched(t, l1, a1, xr, yr, true)
		meshRoundTrip(t, l1, a1, xr.path, yr.path)
		// Keepalives (every 100 ms here) keep answering across both NATs.
		since := time.Now()
		deadline := time.Now().Add(10 * time.Second)
		for !xr.path.LastSeen().After(since.Add(300*time.Millisecond)) || !yr.path.LastSeen().After(since.Add(300*time.Millisecond)) {
			if time.Now().After(deadline) {
				t.Fatalf("keepalives stopped: last seen %s / %s after %s", xr.path.LastSeen(), yr.path.LastSeen(), since)
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
	t.Run("A-to-LAN2", func(t *testing.T) {
		xr, yr := punchPair(t, a1, l2)
		wantPunched(t, a1, l2, xr, yr, true)
	})
	t.Run("same-LAN", func(t *testing.T) {
		xr, yr := punchPair(t, l2, l1)
		wantPunched(t, l2, l1, xr, yr, false)
		meshRoundTrip(t, l2, l1, xr.path, yr.path)
	})
	t.Run("A-to-symmetric-B-fails", func(t *testing.T) {
		xr, yr := punchPair(t, a1, b1)
		for _, c := range []struct {
			n *labNode
			r punchResult
		}{{a1, xr}, {b1, yr}} {
			if !errors.Is(c.r.err, ErrNoPath) {
				t.Fatalf("%s: %v, want ErrNoPath", c.n.id, c.r.err)
			}
			// Given up at the deadline, in time for the relay within the
			// issue's 2 s budget (the bound is that budget, not the
			// deadline plus a guess at scheduling delay).
			const budget = 2 * time.Second
			if c.r.took < DefaultTimeout || c.r.took > budget {
				t.Errorf("%s gave up after %s, want %s to %s", c.n.id, c.r.took, DefaultTimeout, budget)
			}
		}
		if s := a1.p.Stats(); s.Sent == 0 {
			t.Errorf("a1 sent no probes: %+v", s)
		}
	})
	t.Run("C-drops-UDP", func(t *testing.T) {
		if !errors.Is(c1.gatherErr, ErrUDPBlocked) {
			t.Fatalf("c1: gather: %v, want ErrUDPBlocked", c1.gatherErr)
		}
		t.Logf("c1: %v after %s", c1.gatherErr, c1.gatherDur)
		if c1.gatherDur > DefaultGatherTimeout+500*time.Millisecond {
			t.Errorf("c1 learnt UDP is blocked after %s, want within %s", c1.gatherDur, DefaultGatherTimeout+500*time.Millisecond)
		}
		if len(c1.cands.Local) != 1 || c1.cands.Reflexive.IsValid() {
			t.Errorf("c1 candidates %+v", c1.cands)
		}
		n, err := lab.C.NAT.RuleCounter("filter", "FORWARD", netlab.RuleUDPDrop)
		if err != nil || n == 0 {
			t.Fatalf("site C's router dropped %d UDP packets (%v): the failure is not the NAT's", n, err)
		}
		// Punching to it anyway fails at the deadline.
		xr, yr := punchPair(t, a1, c1)
		if !errors.Is(xr.err, ErrNoPath) || !errors.Is(yr.err, ErrNoPath) {
			t.Fatalf("a1 -> c1: %v / %v, want ErrNoPath", xr.err, yr.err)
		}
	})
	// Last: it shortens the NATs' UDP timeouts. Both routers forget an idle
	// UDP mapping after 1 s; the path sees no QUIC packet for 3 s, only
	// keepalive probes (every 100 ms), and then still carries a new QUIC
	// connection: the probes held both mappings.
	t.Run("keepalives-hold-mappings", func(t *testing.T) {
		for _, s := range []*netlab.Site{lab.A, lab.LAN} {
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
		xr, yr := punchPair(t, l1, a1)
		wantPunched(t, l1, a1, xr, yr, true)
		since := time.Now()
		deadline := since.Add(20 * time.Second)
		for !xr.path.LastSeen().After(since.Add(3*time.Second)) || !yr.path.LastSeen().After(since.Add(3*time.Second)) {
			if time.Now().After(deadline) {
				t.Fatalf("keepalives stopped: last seen %s / %s after %s", xr.path.LastSeen(), yr.path.LastSeen(), since)
			}
			time.Sleep(20 * time.Millisecond)
		}
		meshRoundTrip(t, l1, a1, xr.path, yr.path)
	})
}
