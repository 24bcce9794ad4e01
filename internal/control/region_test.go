package control

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// regionJoin sends a regional control plane's join for region with tok
// (any kind) and returns the answer.
func regionJoin(t *testing.T, s *Server, tok, region string) *wire.Message {
	m, _, _ := regionJoinKey(t, s, tok, region)
	return m
}

// regionJoinKey is regionJoin that also returns the client and CA keys.
func regionJoinKey(t *testing.T, s *Server, tok, region string) (*wire.Message, *ecdsa.PrivateKey, *ecdsa.PrivateKey) {
	t.Helper()
	k1, _ := identity.NewKey()
	k2, _ := identity.NewKey()
	csr, _ := identity.NewCSR(k1)
	caCSR, _ := identity.NewCSR(k2)
	return dialJoin(t, s, &wire.Message{Token: tok, Region: region, CSR: csr, CACSR: caCSR}), k1, k2
}

// startRegional starts a regional control plane for region in dir with
// upstream and (if not "") a region join token.
func startRegional(t *testing.T, dir, region, upstream, token string) (*Server, error) {
	return startRegionalLog(t, dir, region, upstream, token, nil)
}

func startRegionalLog(t *testing.T, dir, region, upstream, token string, log *slog.Logger) (*Server, error) {
	t.Helper()
	s, err := New(Config{StateDir: dir, AdminAddr: "127.0.0.1:0", SyncAddr: "127.0.0.1:0",
		HeartbeatInterval: 200 * time.Millisecond, Mode: ModeRegional, Region: region,
		Upstreams: []string{upstream}, RegionJoinToken: token, Logger: log})
	if err != nil {
		return nil, err
	}
	done := make(chan struct{})
	go func() { s.Serve(context.Background()); close(done) }()
	t.Cleanup(func() { s.Close(); <-done })
	return s, nil
}

// agentStream opens an agent's sync stream to s as svid and returns it
// after the welcome, with a write function; it sends the agent's
// heartbeats every 100 ms until the test ends, so that only the server
// ends the stream.
func agentStream(t *testing.T, s *Server, svid *x509svid.SVID, bundle *x509bundle.Bundle, site, node string, caps ...string) (*tls.Conn, *wire.Reader, func(*wire.Message) error) {
	t.Helper()
	src := identity.NewSource()
	src.SetBundles(bundle)
	src.SetSVID(svid)
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", s.SyncAddr(),
		src.ClientConfig(identity.AuthorizeID(identity.ControlID(bundle.TrustDomain())), identity.ALPNSync))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	n := &api.Node{Meta: api.Meta{Name: node}, Spec: api.NodeSpec{Site: site, Region: "east", MeshAddress: "127.0.0.1:1"}}
	if err := wire.Write(c, &wire.Message{Type: wire.TypeHello, Protocol: wire.ProtocolVersion,
		Capabilities: append([]string{wire.CapPolicy2}, caps...), Node: n}); err != nil {
		t.Fatal(err)
	}
	r := wire.NewReader(c)
	if m, err := r.Read(); err != nil || m.Type != wire.TypeWelcome {
		t.Fatalf("%s: welcome %v %+v", node, err, m)
	}
	var mu sync.Mutex
	write := func(m *wire.Message) error {
		mu.Lock()
		defer mu.Unlock()
		return wire.Write(c, m)
	}
	done := make(chan struct{})
	stopped := make(chan struct{})
	t.Cleanup(func() { close(done); <-stopped })
	go func() {
		defer close(stopped)
		for {
			select {
			case <-done:
				return
			case <-time.After(100 * time.Millisecond):
			}
			if write(&wire.Message{Type: wire.TypeHeartbeat}) != nil {
				return
			}
		}
	}()
	return c, r, write
}

// readUntil reads frames until f accepts one.
func readUntil(t *testing.T, r *wire.Reader, what string, f func(*wire.Message) bool) *wire.Message {
	t.Helper()
	for {
		m, err := r.Read()
		if err != nil {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		if f(m) {
			return m
		}
	}
}

// mtls runs mutual TLS between two node sources on loopback (both
// authorizing node identities) and returns the client's and server's
// errors.
func mtls(t *testing.T, client, server *identity.Source) (cerr, serr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		tc := tls.Server(c, server.ServerConfig(identity.AuthorizeNode(), identity.ALPNMesh))
		tc.SetDeadline(time.Now().Add(10 * time.Second))
		err = tc.Handshake()
		if err == nil {
			_, err = tc.Write([]byte{1})
		}
		done <- err
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(c, client.ClientConfig(identity.AuthorizeNode(), identity.ALPNMesh))
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	cerr = tc.Handshake()
	if cerr == nil {
		var b [1]byte
		_, cerr = tc.Read(b[:])
	}
	tc.Close()
	return cerr, <-done
}

// TestRegionJoin: a region token (fmg1) is a kind of its own bound to a
// region; the global plane refuses it for a node or another region, and
// refuses a regional join with a node's token; a good join gets an
// intermediate (path length 0, URI name constraint) and a client
// certificate for spiffe://<td>/region/<name> from the root, once.
func TestRegionJoin(t *testing.T) {
	s := startSecure(t)
	if _, err := s.CreateToken(identity.TokenRegion, "Not_A_Label", "", time.Minute); err == nil {
		t.Fatal("region token for a bad name")
	}
	tok, err := s.CreateToken(identity.TokenRegion, "east", "", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(tok, "fmg1.") {
		t.Fatalf("region token %q", tok)
	}
	join, _ := s.CreateToken(identity.TokenJoin, "s1", "", time.Minute)
	if m := regionJoin(t, s, join, "east"); m.Type != wire.TypeError || !strings.Contains(m.Error, "joins with a region token") {
		t.Fatalf("region with a join token: %+v", m)
	}
	if m := joinAs(t, s, tok, "n1", "s1"); m.Type != wire.TypeError || !strings.Contains(m.Error, "region token is for") {
		t.Fatalf("node with a region token: %+v", m)
	}
	if m := regionJoin(t, s, tok, "west"); m.Type != wire.TypeError || !strings.Contains(m.Error, "token is for region east") {
		t.Fatalf("region token of another region: %+v", m)
	}
	m := regionJoin(t, s, tok, "east")
	if m.Type != wire.TypeJoined {
		t.Fatalf("region join: %+v", m)
	}
	inter, err := identity.ParseDERs(m.CACertificates)
	if err != nil || len(inter) != 1 {
		t.Fatalf("intermediate: %v", err)
	}
	ic := inter[0]
	if !ic.IsCA || ic.MaxPathLen != 0 || !ic.MaxPathLenZero || !slices.Equal(ic.PermittedURIDomains, []string{"fogmesh.local"}) ||
		ic.URIs[0].String() != "spiffe://fogmesh.local/region/east" {
		t.Fatalf("intermediate IsCA %v pathlen %d/%v constraints %v URIs %v", ic.IsCA, ic.MaxPathLen, ic.MaxPathLenZero, ic.PermittedURIDomains, ic.URIs)
	}
	if d := ic.NotAfter.Sub(ic.NotBefore) - identity.ClockSkew; d != identity.DefaultIntermediateTTL {
		t.Fatalf("intermediate lifetime %v", d)
	}
	roots := x509.NewCertPool()
	roots.AddCert(s.CA().Roots()[0])
	if _, err := ic.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("intermediate does not chain to the root: %v", err)
	}
	client, _ := identity.ParseDERs(m.Certificates)
	if len(client) != 1 || client[0].URIs[0].String() != "spiffe://fogmesh.local/region/east" || client[0].IsCA {
		t.Fatalf("client certificate %v", client[0].URIs)
	}
	if m.Trust == nil || len(m.Trust.GossipKey) != 0 || len(m.Trust.Bundles["fogmesh.local"]) == 0 {
		t.Fatalf("trust %+v", m.Trust)
	}
	if m := regionJoin(t, s, tok, "east"); m.Type != wire.TypeError || !strings.Contains(m.Error, "already used") {
		t.Fatalf("reused region token: %+v", m)
	}
	// The refusals did not use up the join token.
	if m := joinAs(t, s, join, "n1", "s1"); m.Type != wire.TypeJoined {
		t.Fatalf("node join: %+v", m)
	}
}

// TestRegionalControlPlane: a regional control plane joins the global one
// with a region token, keeps its identity in its state dir (keys 0600) and
// restarts from it without the token; with the global plane stopped it
// joins a new node, renews a node certificate and issues a workload SVID
// with its intermediate; a node of the global root and a node of the
// intermediate authenticate each other over real mutual TLS.
func TestRegionalControlPlane(t *testing.T) {
	g := startSecure(t)
	tok, _ := g.CreateToken(identity.TokenRegion, "east", "", time.Minute)
	dir := t.TempDir()
	if _, err := startRegional(t, t.TempDir(), "east", g.SyncAddr(), ""); err == nil || !strings.Contains(err.Error(), "--join-token") {
		t.Fatalf("regional start without identity or token: %v", err)
	}
	r, err := startRegional(t, dir, "east", g.SyncAddr(), tok)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{regionCAKeyFile, regionKeyFile} {
		if fi, err := os.Stat(filepath.Join(dir, regionDirName, f)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", f, fi, err)
		}
	}
	if r.CA().IsRoot() || r.CA().Pin() != g.CA().Pin() || !r.CA().Roots()[0].Equal(g.CA().Roots()[0]) {
		t.Fatal("the regional CA is not an intermediate under the global root")
	}
	waitFor(t, 20*time.Second, "region linked", r.RegionLinked)

	// A restart needs no token; another region name is refused.
	r.Close()
	if _, err := startRegional(t, dir, "west", g.SyncAddr(), ""); err == nil || !strings.Contains(err.Error(), `region "east"`) {
		t.Fatalf("restart as another region: %v", err)
	}
	r, err = startRegional(t, dir, "east", g.SyncAddr(), "")
	if err != nil {
		t.Fatalf("restart without token: %v", err)
	}
	waitFor(t, 20*time.Second, "region linked after restart", r.RegionLinked)

	// A node of the global root, for the mutual TLS check below.
	globalNode, _ := g.CA().NodeSource("s0", "g1")

	// The global plane goes away.
	g.Close()
	waitFor(t, 20*time.Second, "region link down", func() bool { return !r.RegionLinked() })

	objs, err := api.Decode([]byte(`[
{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"orders","namespace":"shop"},"spec":{"ports":[{"name":"http","port":80}]}},
{"apiVersion":"fogmesh.io/v1alpha1","kind":"Endpoint","metadata":{"name":"orders-a","namespace":"shop"},"spec":{"service":"orders","node":"n1","address":"10.0.0.1","ports":[{"name":"http","port":8080}]}}]`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.reg.apply(objs); err != nil {
		t.Fatal(err)
	}
	jt, err := r.CreateToken(identity.TokenJoin, "s1", "", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.CreateToken(identity.TokenRegion, "west", "", time.Minute); err == nil {
		t.Fatal("a regional plane made a region token")
	}
	key, _ := identity.NewKey()
	csr, _ := identity.NewCSR(key)
	p, _ := identity.ParseToken(jt)
	jc, err := tls.Dial("tcp", r.SyncAddr(), identity.JoinClientConfig(p.Pin, nil))
	if err != nil {
		t.Fatalf("join TLS to the regional plane (pin of the global root): %v", err)
	}
	jc.SetDeadline(time.Now().Add(5 * time.Second))
	wire.Write(jc, &wire.Message{Type: wire.TypeJoin, Token: jt, CSR: csr,
		Node: &api.Node{Meta: api.Meta{Name: "n1"}, Spec: api.NodeSpec{Site: "s1", Region: "east"}}})
	m, err := wire.NewReader(jc).Read()
	jc.Close()
	if err != nil || m.Type != wire.TypeJoined {
		t.Fatalf("join at the regional plane: %v %+v", err, m)
	}
	certs, _ := identity.ParseDERs(m.Certificates)
	if len(certs) != 2 || !certs[1].Equal(r.CA().Certificate()) {
		t.Fatalf("node chain of %d certificates, want leaf and intermediate", len(certs))
	}
	roots, _ := identity.ParseDERs(m.Trust.Bundles[m.Trust.TrustDomain])
	bundle := x509bundle.FromX509Authorities(r.CA().TrustDomain(), roots)
	nodeSVID, err := identity.NewSVID(certs, key)
	if err != nil {
		t.Fatal(err)
	}

	// The node's stream: renewal and a workload SVID, the global plane
	// still down.
	_, rd, write := agentStream(t, r, nodeSVID, bundle, "s1", "n1")
	key2, _ := identity.NewKey()
	csr2, _ := identity.NewCSR(key2)
	if err := write(&wire.Message{Type: wire.TypeRenew, CSR: csr2}); err != nil {
		t.Fatal(err)
	}
	cm := readUntil(t, rd, "renewed certificate", func(m *wire.Message) bool { return m.Type == wire.TypeCert || m.Type == wire.TypeError })
	renewed, _ := identity.ParseDERs(cm.Certificates)
	if cm.Type != wire.TypeCert || len(renewed) != 2 || renewed[0].SerialNumber.Cmp(certs[0].SerialNumber) == 0 {
		t.Fatalf("renewal at the regional plane: %+v", cm)
	}
	wkey, _ := identity.NewKey()
	wcsr, _ := identity.NewCSR(wkey)
	if err := write(&wire.Message{Type: wire.TypeSVID, Nonce: "w1", CSR: wcsr,
		SVID: &wire.SVIDRequest{Namespace: "shop", ServiceAccount: "orders"}}); err != nil {
		t.Fatal(err)
	}
	sm := readUntil(t, rd, "workload SVID", func(m *wire.Message) bool { return m.Type == wire.TypeSVIDIssued && m.Nonce == "w1" })
	wcerts, err := identity.ParseDERs(sm.Certificates)
	if sm.Error != "" || err != nil || len(wcerts) != 2 || wcerts[0].URIs[0].String() != "spiffe://fogmesh.local/ns/shop/sa/orders" {
		t.Fatalf("workload SVID at the regional plane: %+v", sm)
	}
	if _, _, err := x509svid.Verify(wcerts, bundle); err != nil {
		t.Fatalf("workload SVID does not verify against the global root: %v", err)
	}

	// Real mutual TLS between a node of each CA, both directions.
	renewedSVID, _ := identity.NewSVID(renewed, key2)
	regionalNode := identity.NewSource()
	regionalNode.SetSVID(renewedSVID)
	regionalNode.SetBundles(bundle)
	if cerr, serr := mtls(t, globalNode, regionalNode); cerr != nil || serr != nil {
		t.Fatalf("global node to regional node: %v / %v", cerr, serr)
	}
	if cerr, serr := mtls(t, regionalNode, globalNode); cerr != nil || serr != nil {
		t.Fatalf("regional node to global node: %v / %v", cerr, serr)
	}
}

// waitFor polls f every 20 ms until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// regionDial opens a region stream to s as svid and returns the first
// frame's error (TLS 1.3: a refused client certificate shows there).
func regionDial(t *testing.T, s *Server, svid *x509svid.SVID) error {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", s.SyncAddr(), asIsClientConfig(s, svid, identity.ALPNRegion))
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	m, err := wire.NewReader(c).Read()
	if err == nil && m.Type != wire.TypeTrust {
		t.Fatalf("first frame on a region stream: %+v", m)
	}
	return err
}

// TestRegionIdentityRefused: the global plane's region port refuses a
// region whose identity is wrong (a node certificate; a region identity
// of another CA; one minted by a regional intermediate), expired or
// revoked, each counted under its reason; a good one gets the trust
// document.
func TestRegionIdentityRefused(t *testing.T) {
	g := startSecure(t)
	tok, _ := g.CreateToken(identity.TokenRegion, "east", "", time.Minute)
	m, key, caKey := regionJoinKey(t, g, tok, "east")
	certs, _ := identity.ParseDERs(m.Certificates)
	good, err := identity.NewSVID(certs, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := regionDial(t, g, good); err != nil {
		t.Fatalf("good region identity: %v", err)
	}
	// Renewal on the region stream: only for the keys the region joined
	// with (a stolen client key alone gets no intermediate).
	other1, _ := identity.NewKey()
	if m := regionRenew(t, g, good, key, other1); m.Type != wire.TypeError || !strings.Contains(m.Error, "keys differ") {
		t.Fatalf("renewal with another CA key: %+v", m)
	}
	if m := regionRenew(t, g, good, key, caKey); m.Type != wire.TypeCert || len(m.CACertificates) != 1 {
		t.Fatalf("renewal with the region's keys: %+v", m)
	}
	regionID, _ := identity.RegionID(g.CA().TrustDomain(), "east")
	other, _ := identity.OpenCA(identity.CAConfig{Dir: t.TempDir()})
	sign := func(ca *identity.CA, ttl time.Duration) *x509svid.SVID {
		k, _ := identity.NewKey()
		certs, err := ca.Sign(k.Public(), regionID, identity.IssueOptions{TTL: ttl})
		if err != nil {
			t.Fatal(err)
		}
		svid, _ := identity.NewSVID(certs, k)
		return svid
	}
	// The global root's key, two hours ago: a region certificate that has
	// expired.
	past, err := identity.OpenCA(identity.CAConfig{Dir: filepath.Join(g.cfg.StateDir, "ca"),
		Now: func() time.Time { return time.Now().Add(-2 * time.Hour) }})
	if err != nil {
		t.Fatal(err)
	}
	// A regional intermediate minting a region identity.
	westKey, _ := identity.NewKey()
	westCSR, _ := identity.NewCSR(westKey)
	wcsr, _ := identity.ParseCSR(westCSR)
	westInter, err := g.CA().SignIntermediateCSR(wcsr, "west", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	west, err := identity.OpenIntermediateCA(identity.CAConfig{}, []*x509.Certificate{westInter}, westKey, g.CA().Roots())
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		svid   *x509svid.SVID
		reason string
	}{
		{"node certificate", signNode(t, g.CA(), "s1", "n1", 0), identity.ReasonUnauthorized},
		{"another CA's region", sign(other, 0), identity.ReasonUnknownAuthority},
		{"expired", sign(past, time.Hour), identity.ReasonExpired},
		{"minted by a regional intermediate", sign(west, 0), identity.ReasonUnauthorized},
	} {
		before := g.TLSFailures(c.reason)
		if err := regionDial(t, g, c.svid); err == nil {
			t.Errorf("%s: region stream opened", c.name)
			continue
		}
		waitFor(t, 20*time.Second, c.name+" counted as "+c.reason, func() bool { return g.TLSFailures(c.reason) == before+1 })
	}
	before := g.TLSFailures(identity.ReasonRevoked)
	if _, err := g.revokeRegion("east"); err != nil {
		t.Fatal(err)
	}
	if err := regionDial(t, g, good); err == nil {
		t.Fatal("revoked region: region stream opened")
	}
	waitFor(t, 20*time.Second, "revoked region counted", func() bool { return g.TLSFailures(identity.ReasonRevoked) == before+1 })
	tok2, _ := g.CreateToken(identity.TokenRegion, "east", "", time.Minute)
	if m := regionJoin(t, g, tok2, "east"); m.Type != wire.TypeError || !strings.Contains(m.Error, "region east is revoked") {
		t.Fatalf("rejoin of a revoked region: %+v", m)
	}
}

// TestRegionRevoked: `revoke region` on the global plane reaches an agent
// of the global plane on its sync stream, which then refuses a peer whose
// chain goes through the region's intermediate (real mutual TLS); the
// global sync port refuses that peer; the regional plane's link is closed
// and refused, and it says so in its log.
func TestRegionRevoked(t *testing.T) {
	g := startSecure(t)
	tok, _ := g.CreateToken(identity.TokenRegion, "east", "", time.Minute)
	var logs testenv.Buffer
	r, err := startRegionalLog(t, t.TempDir(), "east", g.SyncAddr(), tok, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "region linked", r.RegionLinked)
	regional, err := r.CA().NodeSource("s1", "rn")
	if err != nil {
		t.Fatal(err)
	}
	gsvid := signNode(t, g.CA(), "s0", "g1", time.Hour)
	_, rd, _ := agentStream(t, g, gsvid, g.CA().Bundle(), "s0", "g1", wire.CapTrust)
	agent := identity.NewSource()
	agent.SetSVID(gsvid)
	agent.SetBundles(g.CA().Bundle())
	tm := readUntil(t, rd, "trust", func(m *wire.Message) bool { return m.Type == wire.TypeTrust })
	agent.SetDenied(tm.Trust.Revoked)
	if cerr, serr := mtls(t, regional, agent); cerr != nil || serr != nil {
		t.Fatalf("before the revocation: %v / %v", cerr, serr)
	}
	// (In region east, as agentStream's hello says: a node's region is
	// bound at its first hello, noderegion.go.)
	if a, m := helloIn(t, g, regional.SVID(), "rn", "s1", "east"); m.Type != wire.TypeWelcome {
		t.Fatalf("global sync port before the revocation: %+v", m)
	} else {
		a.c.Close()
	}
	// A node of the region on its open sync stream to the global plane.
	open, ord, _ := agentStream(t, g, regional.SVID(), g.CA().Bundle(), "s1", "rn")
	open.SetDeadline(time.Now().Add(30 * time.Second))

	id, err := g.revokeRegion("east")
	if err != nil {
		t.Fatal(err)
	}
	at := time.Now()
	tm = readUntil(t, rd, "the region on the deny list", func(m *wire.Message) bool {
		return m.Type == wire.TypeTrust && slices.Contains(m.Trust.Revoked, id)
	})
	t.Logf("deny list at the agent %v after the revocation", time.Since(at))
	agent.SetDenied(tm.Trust.Revoked)
	if _, serr := mtls(t, regional, agent); identity.HandshakeReason(serr) != identity.ReasonRevoked {
		t.Fatalf("agent accepted a client under the revoked region: %v", serr)
	}
	if cerr, _ := mtls(t, agent, regional); identity.HandshakeReason(cerr) != identity.ReasonRevoked {
		t.Fatalf("agent accepted a server under the revoked region: %v", cerr)
	}
	for {
		if _, err := ord.Read(); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("the open sync stream of a node under the revoked region was not closed")
			}
			break
		}
	}
	if m, err := syncDial(t, g, regional.SVID(), "s1", "rn"); err == nil && m.Type == wire.TypeWelcome {
		t.Fatal("global sync port accepted a node under the revoked region")
	}
	waitFor(t, 20*time.Second, "region link closed", func() bool { return !r.RegionLinked() })
	waitFor(t, 20*time.Second, "the regional plane logging the refusal", func() bool {
		return strings.Contains(logs.String(), "refused this region's certificate")
	})
	if r.RegionLinked() {
		t.Fatal("the revoked region linked again")
	}
}

// TestRegionRenewal: with a short region lifetime the regional plane
// renews its intermediate and client certificate over its link at
// half-life (same keys, files rewritten) and issues from the new
// intermediate; once the global plane is gone and the intermediate has
// expired, it issues nothing and a restart says to rejoin.
func TestRegionRenewal(t *testing.T) {
	const ttl = 6 * time.Second
	g, err := New(Config{StateDir: t.TempDir(), AdminAddr: "127.0.0.1:0", SyncAddr: "127.0.0.1:0",
		HeartbeatInterval: 200 * time.Millisecond, RegionCATTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	gdone := make(chan struct{})
	go func() { g.Serve(context.Background()); close(gdone) }()
	t.Cleanup(func() { g.Close(); <-gdone })
	tok, _ := g.CreateToken(identity.TokenRegion, "east", "", time.Minute)
	dir := t.TempDir()
	r, err := startRegional(t, dir, "east", g.SyncAddr(), tok)
	if err != nil {
		t.Fatal(err)
	}
	first := r.CA().Certificate()
	waitFor(t, 30*time.Second, "a renewal", func() bool { return r.sec.region.renewals.Load() >= 1 })
	second := r.CA().Certificate()
	if second.SerialNumber.Cmp(first.SerialNumber) == 0 || !identity.PublicKeyEqual(second.PublicKey, first.PublicKey) {
		t.Fatal("intermediate not renewed, or renewed with another key")
	}
	if d := second.NotBefore.Sub(first.NotBefore); d < ttl/2 {
		t.Fatalf("renewed %v after issue, before half-life", d)
	}
	b, _ := os.ReadFile(filepath.Join(dir, regionDirName, regionCAFile))
	if onDisk, err := identity.ParseCertificatesPEM(b); err != nil || onDisk[0].SerialNumber.Cmp(first.SerialNumber) == 0 ||
		!identity.PublicKeyEqual(onDisk[0].PublicKey, first.PublicKey) {
		t.Fatalf("ca.pem not rewritten: %v", err)
	}
	n, err := r.CA().NodeSource("s1", "n1")
	if err != nil {
		t.Fatal(err)
	}
	if got := n.SVID().Certificates; len(got) != 2 || got[1].SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Fatal("the node certificate does not come with the renewed intermediate")
	}
	g.Close()
	waitFor(t, 20*time.Second, "the link down", func() bool { return !r.RegionLinked() }) // no renewal in flight
	last := r.CA().Certificate()
	waitFor(t, 2*ttl, "the intermediate to expire", func() bool { return time.Now().After(last.NotAfter) })
	if _, err := r.CA().NodeSource("s1", "n2"); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("an expired intermediate issued: %v", err)
	}
	r.Close()
	if _, err := startRegional(t, dir, "east", g.SyncAddr(), ""); err == nil || !strings.Contains(err.Error(), "rejoin with a new region token") {
		t.Fatalf("restart with an expired intermediate: %v", err)
	}
}

// TestAdminCertFromRegionRefused: an admin client certificate minted with
// a regional intermediate's key is refused by the global plane's admin
// API (a stolen regional key grants no global admin rights); one from the
// root is accepted.
func TestAdminCertFromRegionRefused(t *testing.T) {
	g := startSecure(t)
	rkey, _ := identity.NewKey()
	der, _ := identity.NewCSR(rkey)
	csr, _ := identity.ParseCSR(der)
	inter, err := g.CA().SignIntermediateCSR(csr, "east", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	east, err := identity.OpenIntermediateCA(identity.CAConfig{}, []*x509.Certificate{inter}, rkey, g.CA().Roots())
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(g.CA().Roots()[0])
	get := func(ca *identity.CA) (int, error) {
		key, _ := identity.NewKey()
		id, _ := identity.AdminID(ca.TrustDomain(), "ops")
		certs, err := ca.Sign(key.Public(), id, identity.IssueOptions{TTL: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots,
			Certificates: []tls.Certificate{{Certificate: identity.DERs(certs), PrivateKey: key}}}}}
		resp, err := c.Get("https://" + g.AdminAddr() + "/v1/trust")
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	if code, err := get(g.CA()); err != nil || code != http.StatusOK {
		t.Fatalf("admin certificate of the root: %d %v", code, err)
	}
	if code, err := get(east); err == nil && code == http.StatusOK {
		t.Fatal("admin certificate minted by a regional intermediate was accepted")
	}
}

// regionRenew opens a region stream as svid and asks for renewal with the
// CSRs of key and caKey; it returns the answer.
func regionRenew(t *testing.T, s *Server, svid *x509svid.SVID, key, caKey *ecdsa.PrivateKey) *wire.Message {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", s.SyncAddr(), asIsClientConfig(s, svid, identity.ALPNRegion))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	csr, _ := identity.NewCSR(key)
	caCSR, _ := identity.NewCSR(caKey)
	if err := wire.Write(c, &wire.Message{Type: wire.TypeRenew, CSR: csr, CACSR: caCSR}); err != nil {
		t.Fatal(err)
	}
	return readUntil(t, wire.NewReader(c), "renewal answer", func(m *wire.Message) bool { return m.Type != wire.TypeTrust })
}

// TestRegionForwardsGlobalDenyList: a node revoked at the global plane is
// on the deny list the regional plane pushes to its own agents, over the
// region link, with no restart.
func TestRegionForwardsGlobalDenyList(t *testing.T) {
	g := startSecure(t)
	tok, _ := g.CreateToken(identity.TokenRegion, "east", "", time.Minute)
	r, err := startRegional(t, t.TempDir(), "east", g.SyncAddr(), tok)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "region linked", r.RegionLinked)
	n, err := r.CA().NodeSource("s1", "rn")
	if err != nil {
		t.Fatal(err)
	}
	_, rd, _ := agentStream(t, r, n.SVID(), r.CA().Bundle(), "s1", "rn", wire.CapTrust)
	if m, err := syncDial(t, g, signNode(t, g.CA(), "s0", "thief", 0), "s0", "thief"); err != nil || m.Type != wire.TypeWelcome {
		t.Fatalf("thief: %v %+v", err, m)
	}
	id, err := g.revokeNode("thief")
	if err != nil {
		t.Fatal(err)
	}
	m := readUntil(t, rd, "the global revocation at the regional agent", func(m *wire.Message) bool {
		return m.Type == wire.TypeTrust && slices.Contains(m.Trust.Revoked, id)
	})
	if len(m.Trust.GossipKey) == 0 {
		t.Fatal("the regional plane's agents lost their gossip key")
	}
}

// TestRegionRenewsAfterRootRotation: when the global root rotates, the
// regional plane renews its intermediate and client certificate from the
// new root at once (not at half-life), so that they outlive the old
// root's overlap; its agents get both roots meanwhile.
func TestRegionRenewsAfterRootRotation(t *testing.T) {
	g := startSecure(t)
	tok, _ := g.CreateToken(identity.TokenRegion, "east", "", time.Minute)
	r, err := startRegional(t, t.TempDir(), "east", g.SyncAddr(), tok)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "region linked", r.RegionLinked)
	if err := g.CA().Rotate(); err != nil {
		t.Fatal(err)
	}
	if err := g.sec.issueServing(); err != nil {
		t.Fatal(err)
	}
	if err := g.sec.refreshTrust(); err != nil {
		t.Fatal(err)
	}
	newRoot := g.CA().Roots()[0]
	waitFor(t, 20*time.Second, "a renewal of both certificates from the new root", func() bool {
		return r.CA().Certificate().CheckSignatureFrom(newRoot) == nil &&
			r.sec.region.src.SVID().Certificates[0].CheckSignatureFrom(newRoot) == nil
	})
	if roots := r.CA().Roots(); len(roots) != 2 || !roots[0].Equal(newRoot) {
		t.Fatalf("the regional plane trusts %d roots", len(roots))
	}
	n, err := r.CA().NodeSource("s1", "n1")
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(newRoot)
	inters := x509.NewCertPool()
	inters.AddCert(n.SVID().Certificates[1])
	if _, err := n.SVID().Certificates[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("a node of the region does not verify against the new root alone: %v", err)
	}
}
