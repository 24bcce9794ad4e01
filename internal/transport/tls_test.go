package transport

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/fogmesh/fogmesh/internal/identity"
)

func testCA(t testing.TB, td string, now func() time.Time) *identity.CA {
	t.Helper()
	ca, err := identity.OpenCA(identity.CAConfig{Dir: t.TempDir(), TrustDomain: td, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func testSVID(t testing.TB, ca *identity.CA, site, node string) *x509svid.SVID {
	t.Helper()
	key, _ := identity.NewKey()
	der, _ := identity.NewCSR(key)
	csr, err := identity.ParseCSR(der)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := ca.SignNodeCSR(csr, site, node)
	if err != nil {
		t.Fatal(err)
	}
	s, err := identity.NewSVID(certs, key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func testSource(svid *x509svid.SVID, bundles ...*x509bundle.Bundle) *identity.Source {
	s := identity.NewSource()
	if svid != nil {
		s.SetSVID(svid)
	}
	s.SetBundles(bundles...)
	return s
}

// peerDialer records the peer each stream's context carries.
type peerDialer struct {
	mapDialer
	mu    sync.Mutex
	peers []Peer
}

func (d *peerDialer) DialLocal(ctx context.Context, h Header) (net.Conn, error) {
	p, _ := PeerFromContext(ctx)
	d.mu.Lock()
	d.peers = append(d.peers, p)
	d.mu.Unlock()
	return d.mapDialer.DialLocal(ctx, h)
}

func startTLSServer(t testing.TB, src *identity.Source, d Dialer) *testServer {
	return startServer(t, listen(t, "127.0.0.1:0"), d, func(c *ServerConfig) {
		c.TLS = src.ServerConfig(identity.AuthorizeNode(), identity.ALPNMesh)
		c.HeaderTimeout = 2 * time.Second
	})
}

func tlsClient(t testing.TB, src *identity.Source, node string) (*Client, *metrics.Set) {
	set := metrics.NewSet()
	cfg := ClientConfig{SourceNode: node, Metrics: set, DialTimeout: 2 * time.Second}
	if src != nil {
		cfg.TLS = src.ClientConfig(identity.AuthorizeNode(), identity.ALPNMesh)
	}
	c := NewClient(cfg)
	t.Cleanup(func() { c.Close() })
	return c, set
}

func TestMTLSPeerIdentityAndSourceCheck(t *testing.T) {
	ca := testCA(t, "", nil)
	work := serveWorkload(t, "127.0.0.1:0", echo)
	d := &peerDialer{mapDialer: mapDialer{"web-1": work}}
	ts := startTLSServer(t, testSource(testSVID(t, ca, "s", "node-b"), ca.Bundle()), d)
	c, _ := tlsClient(t, testSource(testSVID(t, ca, "s", "node-a"), ca.Bundle()), "node-a")

	dialRoundTrip(t, c, ts.addr, "web-1", "hello over mTLS")
	d.mu.Lock()
	if len(d.peers) != 1 || d.peers[0].Node != "node-a" || d.peers[0].Site != "s" ||
		d.peers[0].ID.String() != "spiffe://fogmesh.local/site/s/node/node-a" {
		t.Fatalf("peers seen by DialLocal: %+v", d.peers)
	}
	d.mu.Unlock()
	// A header that claims another source node is refused.
	h := header("web-1")
	h.Source = "node-x"
	if _, err := c.Dial(context.Background(), ts.addr, h); !errors.Is(err, ErrRefused) {
		t.Fatalf("spoofed source: %v", err)
	}
}

func TestMTLSRefusals(t *testing.T) {
	ca := testCA(t, "", nil)
	other := testCA(t, "", nil)
	past := time.Now().Add(-72 * time.Hour)
	old, err := identity.OpenCA(identity.CAConfig{Dir: t.TempDir(), TrustDomain: "past.example", Now: func() time.Time { return past },
		NodeTTL: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	work := serveWorkload(t, "127.0.0.1:0", echo)
	srv := testSource(testSVID(t, ca, "s", "node-b"), ca.Bundle(), old.Bundle())
	ts := startTLSServer(t, srv, mapDialer{"web-1": work})
	revoked := testSVID(t, ca, "s", "bad")
	srv.SetDenied([]string{revoked.ID.String()})

	noCert := identity.NewSource()
	noCert.SetBundles(ca.Bundle())
	cases := []struct {
		name   string
		client func() *Client
		reason string
	}{
		{"no certificate", func() *Client {
			c := NewClient(ClientConfig{SourceNode: "x", DialTimeout: 2 * time.Second,
				TLS: &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true, NextProtos: []string{identity.ALPNMesh}}})
			t.Cleanup(func() { c.Close() })
			return c
		}, identity.ReasonNoCertificate},
		{"another CA", func() *Client {
			c, _ := tlsClient(t, testSource(testSVID(t, other, "s", "x"), ca.Bundle()), "x")
			return c
		}, identity.ReasonUnknownAuthority},
		{"expired", func() *Client {
			// An old agent that presents its expired certificate (a
			// Source withholds it).
			cfg := testSource(nil, ca.Bundle()).ClientConfig(identity.AuthorizeNode(), identity.ALPNMesh)
			svid := testSVID(t, old, "s", "x")
			cert := &tls.Certificate{PrivateKey: svid.PrivateKey}
			for _, c := range svid.Certificates {
				cert.Certificate = append(cert.Certificate, c.Raw)
			}
			cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
			c := NewClient(ClientConfig{SourceNode: "x", DialTimeout: 2 * time.Second, TLS: cfg})
			t.Cleanup(func() { c.Close() })
			return c
		}, identity.ReasonExpired},
		{"revoked", func() *Client {
			c, _ := tlsClient(t, testSource(revoked, ca.Bundle()), "bad")
			return c
		}, identity.ReasonRevoked},
		{"plaintext", func() *Client {
			c, _ := tlsClient(t, nil, "x")
			return c
		}, identity.ReasonNotTLS},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := tc.client().Dial(context.Background(), ts.addr, header("web-1"))
			if err == nil {
				conn.Close()
				t.Fatal("dial succeeded")
			}
			eventually(t, tc.reason+" counted", func() bool { return TLSFailures(ts.metrics, "in", tc.reason) == 1 })
		})
	}
	// The server still serves good peers.
	c, _ := tlsClient(t, testSource(testSVID(t, ca, "s", "good"), ca.Bundle()), "good")
	dialRoundTrip(t, c, ts.addr, "web-1", "still serving")
}

// captureRelay forwards TCP to target and records every byte that passes.
type captureRelay struct {
	addr string
	mu   sync.Mutex
	buf  bytes.Buffer
}

func (r *captureRelay) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.buf.Write(p)
}

func (r *captureRelay) captured() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return bytes.Clone(r.buf.Bytes())
}

func startRelay(t *testing.T, target string) *captureRelay {
	ln := listen(t, "127.0.0.1:0")
	r := &captureRelay{addr: ln.Addr().String()}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			wg.Add(2)
			go func() { defer wg.Done(); io.Copy(io.MultiWriter(u, r), c); u.Close() }()
			go func() { defer wg.Done(); io.Copy(io.MultiWriter(c, r), u); c.Close() }()
			t.Cleanup(func() { c.Close(); u.Close() })
		}
	}()
	return r
}

// TestMTLSConfidentiality: the same proxied connection through a relay that
// captures the mesh bytes, once over mTLS (the marker must not appear) and
// once in insecure mode (it must: the check can fail).
func TestMTLSConfidentiality(t *testing.T) {
	const marker = "CONFIDENTIAL-MARKER-4f1c9a"
	ca := testCA(t, "", nil)
	work := serveWorkload(t, "127.0.0.1:0", echo)
	for _, secure := range []bool{true, false} {
		var ts *testServer
		var c *Client
		if secure {
			ts = startTLSServer(t, testSource(testSVID(t, ca, "s", "b"), ca.Bundle()), mapDialer{"web-1": work})
			c, _ = tlsClient(t, testSource(testSVID(t, ca, "s", "a"), ca.Bundle()), "a")
		} else {
			ts = startServer(t, listen(t, "127.0.0.1:0"), mapDialer{"web-1": work}, nil)
			c, _ = tlsClient(t, nil, "a")
		}
		relay := startRelay(t, ts.addr)
		dialRoundTrip(t, c, relay.addr, "web-1", marker)
		if got := bytes.Contains(relay.captured(), []byte(marker)); got == secure {
			t.Fatalf("secure=%v: marker visible on the wire = %v", secure, got)
		}
	}
}

// TestMTLSRotationOverlap: during a CA rotation's overlap, a node with a
// certificate from the old root and one from the new root talk both ways.
func TestMTLSRotationOverlap(t *testing.T) {
	ca := testCA(t, "", nil)
	oldSVID := testSVID(t, ca, "s", "old")
	if err := ca.Rotate(); err != nil {
		t.Fatal(err)
	}
	newSVID := testSVID(t, ca, "s", "new")
	work := serveWorkload(t, "127.0.0.1:0", echo)
	for _, pair := range [][2]*x509svid.SVID{{oldSVID, newSVID}, {newSVID, oldSVID}} {
		ts := startTLSServer(t, testSource(pair[0], ca.Bundle()), mapDialer{"web-1": work})
		_, node, _ := identity.ParseNodeID(pair[1].ID)
		c, _ := tlsClient(t, testSource(pair[1], ca.Bundle()), node)
		conn, err := c.Dial(context.Background(), ts.addr, header("web-1"))
		if err != nil {
			t.Fatalf("%s -> %s: %v", pair[1].ID, pair[0].ID, err)
		}
		roundTrip(t, conn, "across roots")
		conn.Close()
	}
}

// TestMTLSRenewAndRevoke: swapping both sides' certificates keeps an open
// proxied connection; revoking the client closes it and refuses the next.
func TestMTLSRenewAndRevoke(t *testing.T) {
	ca := testCA(t, "", nil)
	work := serveWorkload(t, "127.0.0.1:0", echo)
	srv := testSource(testSVID(t, ca, "s", "b"), ca.Bundle())
	ts := startTLSServer(t, srv, mapDialer{"web-1": work})
	cli := testSource(testSVID(t, ca, "s", "a"), ca.Bundle())
	c, _ := tlsClient(t, cli, "a")
	conn, err := c.Dial(context.Background(), ts.addr, header("web-1"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	roundTrip(t, conn, "before renewal")
	cli.SetSVID(testSVID(t, ca, "s", "a"))
	srv.SetSVID(testSVID(t, ca, "s", "b"))
	roundTrip(t, conn, "after renewal")
	// A new session handshakes with the renewed certificates.
	c2, _ := tlsClient(t, cli, "a")
	conn2, err := c2.Dial(context.Background(), ts.addr, header("web-1"))
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, conn2, "new session")
	conn2.Close()

	id := cli.SVID().ID
	srv.SetDenied([]string{id.String()})
	if n := ts.DropPeer(id); n != 2 {
		t.Fatalf("DropPeer closed %d sessions, want 2", n)
	}
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); err == nil {
		t.Fatal("revoked peer's connection still open")
	}
	c.DropSession(ts.addr)
	if _, err := c.Dial(context.Background(), ts.addr, header("web-1")); err == nil {
		t.Fatal("revoked peer dialed again")
	}
	eventually(t, "revoked counted", func() bool { return TLSFailures(ts.metrics, "in", identity.ReasonRevoked) == 1 })
}

// BenchmarkMeshStreamTLS is BenchmarkMeshStream over the mTLS mesh port: one
// stream of a yamux session carried by one mutual TLS 1.3 connection (node
// certificates from a test CA), into a sink workload, in 32 KiB writes: what
// the agents' relay (io.Copy) hands the stream. Compare with
// BenchmarkMeshStream (1 MiB writes, plaintext) for the cost of TLS on the
// mesh data path.
func BenchmarkMeshStreamTLS(b *testing.B) {
	const chunk = 32 << 10
	ca := testCA(b, "", nil)
	sink, sunk := startSink(b)
	srv := startTLSServer(b, testSource(testSVID(b, ca, "s", "node-b"), ca.Bundle()), mapDialer{"sink": sink})
	client, _ := tlsClient(b, testSource(testSVID(b, ca, "s", "node-a"), ca.Bundle()), "node-a")
	conn, err := client.Dial(context.Background(), srv.addr, header("sink"))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()

	benchBulk(b, conn, chunk, sunk)
}
