package transport

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// Sessions of revoked and expired peers (peerauth.go), over real TLS and
// QUIC on loopback, with certificates of a few seconds.

// cutBound is how long after a revocation reaches a transport (Revalidate
// returned, or the next stream was asked for) or a peer chain expires an
// in-flight stream may take to fail: the close crosses loopback. Generous
// for a busy 2-core machine; the design bound is the close itself.
const cutBound = 2 * time.Second

// cutLog records the cuts a transport reports.
type cutLog struct {
	mu   sync.Mutex
	cuts []Cut
}

func (l *cutLog) add(c Cut) { l.mu.Lock(); l.cuts = append(l.cuts, c); l.mu.Unlock() }
func (l *cutLog) get() []Cut {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Cut(nil), l.cuts...)
}

// ttlSVID issues a node SVID of ca living ttl.
func ttlSVID(t testing.TB, ca *identity.CA, site, node string, ttl time.Duration) *x509svid.SVID {
	t.Helper()
	key, _ := identity.NewKey()
	id, err := identity.NodeID(ca.TrustDomain(), site, node)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := ca.Sign(key.Public(), id, identity.IssueOptions{TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	s, err := identity.NewSVID(certs, key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// regionalCA is a regional intermediate CA of root for region, its
// certificate living ttl.
func regionalCA(t testing.TB, root *identity.CA, region string, ttl time.Duration) *identity.CA {
	t.Helper()
	key, _ := identity.NewKey()
	der, _ := identity.NewCSR(key)
	csr, err := identity.ParseCSR(der)
	if err != nil {
		t.Fatal(err)
	}
	inter, err := root.SignIntermediateCSR(csr, region, ttl)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := identity.OpenIntermediateCA(identity.CAConfig{TrustDomain: root.TrustDomain().Name()},
		[]*x509.Certificate{inter}, key, root.Roots())
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// cutServer serves mesh TLS with src, checking peers against src's deny
// list, recording cuts.
func cutServer(t testing.TB, src *identity.Source, d Dialer) (*testServer, *cutLog) {
	log := &cutLog{}
	ts := startServer(t, listen(t, "127.0.0.1:0"), d, func(c *ServerConfig) {
		c.TLS = src.ServerConfig(identity.AuthorizeNode(), identity.ALPNMesh)
		c.HeaderTimeout = 2 * time.Second
		c.PeerCheck, c.OnCut = src.CheckPeer, log.add
	})
	return ts, log
}

// cutClient is tlsClient with src's deny list as PeerCheck.
func cutClient(t testing.TB, src *identity.Source, node string) (*Client, *cutLog) {
	log := &cutLog{}
	c := NewClient(ClientConfig{SourceNode: node, DialTimeout: 3 * time.Second,
		TLS: src.ClientConfig(identity.AuthorizeNode(), identity.ALPNMesh), PeerCheck: src.CheckPeer, OnCut: log.add})
	t.Cleanup(func() { c.Close() })
	return c, log
}

// readFails waits up to cutBound for conn to fail a read and returns the
// error (the test fails if conn stays open).
func readFails(t testing.TB, what string, conn net.Conn) error {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(cutBound))
	_, err := conn.Read(make([]byte, 1))
	if err == nil || isTimeout(err) {
		t.Fatalf("%s: the stream is still open %v after the cut (err %v)", what, cutBound, err)
	}
	return err
}

// isTimeout reports whether err is a passed read deadline.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestRevokedPeerSessionCutAndRefused: a node revoked while its session is
// open loses it on the first new stream after the deny list changed, even
// before anyone calls Revalidate (the gap): the new stream is refused, the
// in-flight one fails at once, the redial is refused at the handshake,
// and the cut is reported and counted.
func TestRevokedPeerSessionCutAndRefused(t *testing.T) {
	ca := testCA(t, "", nil)
	work := serveWorkload(t, "127.0.0.1:0", echo)
	srv := testSource(testSVID(t, ca, "s", "b"), ca.Bundle())
	ts, cuts := cutServer(t, srv, mapDialer{"web-1": work})
	cli := testSource(testSVID(t, ca, "s", "a"), ca.Bundle())
	c, _ := tlsClient(t, cli, "a")
	conn, err := c.Dial(context.Background(), ts.addr, header("web-1"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	roundTrip(t, conn, "before the revocation")

	aID := cli.SVID().ID
	srv.SetDenied([]string{aID.String()})
	if _, err := c.Dial(context.Background(), ts.addr, header("web-1")); err == nil {
		t.Fatal("a new stream of the revoked node was served on its open session")
	}
	readFails(t, "the revoked node's in-flight stream", conn)
	if got := cuts.get(); len(got) != 1 || got[0].Peer != aID || got[0].Reason != CutRevoked || got[0].Dir != "in" ||
		!errors.Is(got[0].Err, ErrPeerRevoked) {
		t.Fatalf("cuts reported: %+v", got)
	}
	if n := SessionsCut(ts.metrics, "in", CutRevoked); n != 1 {
		t.Fatalf("fogmesh_mesh_sessions_cut_total{dir=in,reason=revoked} = %d", n)
	}
	eventually(t, "the redial refused at the handshake", func() bool { return TLSFailures(ts.metrics, "in", identity.ReasonRevoked) >= 1 })
}

// TestRevalidateCutsBothWays: Revalidate (what the agent calls when the
// deny list changes) cuts at once the sessions of a revoked peer on the
// side that accepted them and on the side that dialed them; the in-flight
// streams on the cutting side fail with ErrPeerRevoked. Sessions of other
// peers stay.
func TestRevalidateCutsBothWays(t *testing.T) {
	ca := testCA(t, "", nil)
	work := serveWorkload(t, "127.0.0.1:0", echo)
	srv := testSource(testSVID(t, ca, "s", "b"), ca.Bundle())
	ts, _ := cutServer(t, srv, mapDialer{"web-1": work})
	cliA := testSource(testSVID(t, ca, "s", "a"), ca.Bundle())
	cliC := testSource(testSVID(t, ca, "s", "c"), ca.Bundle())
	a, aCuts := cutClient(t, cliA, "a")
	cc, _ := cutClient(t, cliC, "c")
	dial := func(c *Client) net.Conn {
		conn, err := c.Dial(context.Background(), ts.addr, header("web-1"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		roundTrip(t, conn, "hello")
		return conn
	}
	aConn, cConn := dial(a), dial(cc)

	// The accepting side revokes a.
	srv.SetDenied([]string{cliA.SVID().ID.String()})
	if n := ts.Revalidate(); n != 1 {
		t.Fatalf("server Revalidate cut %d sessions, want 1", n)
	}
	readFails(t, "a's stream after b revoked a", aConn)
	roundTrip(t, cConn, "c is not revoked")

	// The dialing side revokes b: its own streams to b fail, naming why.
	aConn2 := func() net.Conn {
		srv.SetDenied(nil)
		return dial(a)
	}()
	bID := srv.SVID().ID
	cliA.SetDenied([]string{bID.String()})
	if n := a.Revalidate(); n != 1 {
		t.Fatalf("client Revalidate cut %d sessions, want 1", n)
	}
	if err := readFails(t, "a's stream after a revoked b", aConn2); !errors.Is(err, ErrPeerRevoked) {
		t.Fatalf("in-flight stream error %v does not say the peer was revoked", err)
	}
	if got := aCuts.get(); len(got) != 1 || got[0].Peer != bID || got[0].Dir != "out" || got[0].Streams != 1 {
		t.Fatalf("client cuts: %+v", got)
	}
	if _, err := a.Dial(context.Background(), ts.addr, header("web-1")); err == nil {
		t.Fatal("a dialed the revoked b again")
	}
	if n := a.Revalidate(); n != 0 {
		t.Fatalf("a second Revalidate cut %d more", n)
	}
}

// TestRegionRevocationCutsItsNodes: revoking a regional intermediate cuts
// the sessions of every node it issued (the deny list names the region,
// not the node), and leaves nodes of the root alone.
func TestRegionRevocationCutsItsNodes(t *testing.T) {
	root := testCA(t, "", nil)
	east := regionalCA(t, root, "east", time.Hour)
	work := serveWorkload(t, "127.0.0.1:0", echo)
	srv := testSource(testSVID(t, root, "s", "b"), root.Bundle())
	ts, cuts := cutServer(t, srv, mapDialer{"web-1": work})
	regional := testSource(testSVID(t, east, "s2", "r"), root.Bundle())
	global := testSource(testSVID(t, root, "s", "g"), root.Bundle())
	r, _ := cutClient(t, regional, "r")
	g, _ := cutClient(t, global, "g")
	rConn, err := r.Dial(context.Background(), ts.addr, header("web-1"))
	if err != nil {
		t.Fatal(err)
	}
	defer rConn.Close()
	gConn, err := g.Dial(context.Background(), ts.addr, header("web-1"))
	if err != nil {
		t.Fatal(err)
	}
	defer gConn.Close()
	roundTrip(t, rConn, "regional")
	roundTrip(t, gConn, "global")

	regionID, _ := identity.RegionID(root.TrustDomain(), "east")
	srv.SetDenied([]string{regionID.String()})
	if n := ts.Revalidate(); n != 1 {
		t.Fatalf("Revalidate cut %d sessions, want the regional node's 1", n)
	}
	readFails(t, "the regional node's stream", rConn)
	roundTrip(t, gConn, "the root's node keeps its session")
	if got := cuts.get(); len(got) != 1 || got[0].Peer != regional.SVID().ID || !errors.Is(got[0].Err, ErrPeerRevoked) {
		t.Fatalf("cuts: %+v", got)
	}
}

// TestExpiredPeerSessionCutAtExpiry: a session is closed when the first
// certificate of its peer's chain expires (here a regional intermediate
// of 3 s), on the accepting side and on the dialing side, although the
// stream on it is busy; the dialing side's stream says the peer expired.
func TestExpiredPeerSessionCutAtExpiry(t *testing.T) {
	root := testCA(t, "", nil)
	short := regionalCA(t, root, "brief", 3*time.Second)
	work := serveWorkload(t, "127.0.0.1:0", echo)

	// In: the client's chain expires.
	srv := testSource(testSVID(t, root, "s", "b"), root.Bundle())
	ts, cuts := cutServer(t, srv, mapDialer{"web-1": work})
	cli := testSource(testSVID(t, short, "s", "a"), root.Bundle())
	notAfter := cli.SVID().Certificates[0].NotAfter
	c, _ := cutClient(t, cli, "a")
	conn, err := c.Dial(context.Background(), ts.addr, header("web-1"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	// Out: the server's chain expires.
	srv2 := testSource(testSVID(t, short, "s", "b2"), root.Bundle())
	ts2, _ := cutServer(t, srv2, mapDialer{"web-1": work})
	cli2 := testSource(testSVID(t, root, "s", "a2"), root.Bundle())
	c2, c2Cuts := cutClient(t, cli2, "a2")
	conn2, err := c2.Dial(context.Background(), ts2.addr, header("web-1"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()

	// Busy streams until the expiry.
	for time.Until(notAfter) > 300*time.Millisecond {
		roundTrip(t, conn, "alive")
		roundTrip(t, conn2, "alive")
		time.Sleep(50 * time.Millisecond) // poll interval, not synchronisation
	}
	for _, x := range []struct {
		what string
		conn net.Conn
	}{{"the expired client's stream", conn}, {"the stream to the expired server", conn2}} {
		x.conn.SetReadDeadline(notAfter.Add(cutBound))
		_, err := x.conn.Read(make([]byte, 1))
		if err == nil || isTimeout(err) {
			t.Fatalf("%s still open %v after the expiry at %s (err %v)", x.what, cutBound, notAfter, err)
		}
		if time.Now().Before(notAfter) {
			t.Fatalf("%s cut at %s, before the expiry at %s", x.what, time.Now(), notAfter)
		}
		if x.conn == conn2 && !errors.Is(err, ErrPeerExpired) {
			t.Fatalf("%s: error %v does not say the peer expired", x.what, err)
		}
	}
	if got := cuts.get(); len(got) != 1 || got[0].Reason != CutExpired || got[0].Dir != "in" {
		t.Fatalf("server cuts: %+v", got)
	}
	if got := c2Cuts.get(); len(got) != 1 || got[0].Reason != CutExpired || got[0].Dir != "out" {
		t.Fatalf("client cuts: %+v", got)
	}
	if n := SessionsCut(ts.metrics, "in", CutExpired); n != 1 {
		t.Fatalf("fogmesh_mesh_sessions_cut_total{dir=in,reason=expired} = %d", n)
	}
}

// slowEcho answers each message after a delay, so a stream is in flight
// for that long.
func slowEcho(d time.Duration) func(net.Conn) {
	return func(c net.Conn) {
		buf := make([]byte, 64)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			time.Sleep(d)
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
		}
	}
}

// TestRenewalAcrossExpiryNoFailedStream: both nodes renew their 4 s
// certificates at half life, as agents do, while four loops keep streams
// of 150 ms in flight for three lifetimes: every old session expires with
// requests running, yet none fails. The dialing side moves new streams to
// a new session a quarter life before the server's certificate expires
// (retireAt), and after its own renewal (RetireAll, which the agent calls),
// so an expiry cuts only idle sessions.
func TestRenewalAcrossExpiryNoFailedStream(t *testing.T) {
	ca := testCA(t, "", nil)
	const life = 4 * time.Second
	work := serveWorkload(t, "127.0.0.1:0", slowEcho(150*time.Millisecond))
	srv := testSource(ttlSVID(t, ca, "s", "b", life), ca.Bundle())
	ts, srvCuts := cutServer(t, srv, mapDialer{"web-1": work})
	cli := testSource(ttlSVID(t, ca, "s", "a", life), ca.Bundle())
	c, cliCuts := cutClient(t, cli, "a")

	ctx, cancel := context.WithTimeout(context.Background(), 3*life)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the renewals, at half life
		defer wg.Done()
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(life / 2):
			}
			srv.SetSVID(ttlSVID(t, ca, "s", "b", life))
			cli.SetSVID(ttlSVID(t, ca, "s", "a", life))
			c.RetireAll()
		}
	}()
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				err := func() error {
					conn, err := c.Dial(context.Background(), ts.addr, header("web-1"))
					if err != nil {
						return err
					}
					defer conn.Close()
					conn.SetDeadline(time.Now().Add(3 * time.Second))
					if _, err := io.WriteString(conn, "req"); err != nil {
						return err
					}
					_, err = io.ReadFull(conn, make([]byte, 3))
					return err
				}()
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				} else {
					ok.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if failed.Load() > 0 {
		t.Fatalf("%d of %d requests failed across renewals; first: %v", failed.Load(), failed.Load()+ok.Load(), firstErr.Load())
	}
	if ok.Load() < 20 {
		t.Fatalf("only %d requests in %v", ok.Load(), 3*life)
	}
	// The old sessions did reach their expiry (or were closed idle before).
	t.Logf("%d requests; cuts: server %d, client %d", ok.Load(), len(srvCuts.get()), len(cliCuts.get()))
}

// TestQUICRevokedAndExpiredPeerCut: the QUIC carrier cuts as the TLS one
// does: a revoked peer's connection on Revalidate, and on its next stream
// in the gap; an expired peer's connection at its expiry.
func TestQUICRevokedAndExpiredPeerCut(t *testing.T) {
	root := testCA(t, "", nil)
	short := regionalCA(t, root, "brief", 3*time.Second)
	work := serveWorkload(t, "127.0.0.1:0", echo)
	srvSrc := testSource(testSVID(t, root, "s", "node-b"), root.Bundle())
	srvCuts := &cutLog{}
	ts := startQUICServer(t, nil, srvSrc, mapDialer{"web-1": work}, func(c *QUICServerConfig) {
		c.PeerCheck, c.OnCut = srvSrc.CheckPeer, srvCuts.add
	})
	client := func(src *identity.Source, node string) (*QUICClient, *cutLog) {
		l := &cutLog{}
		c, _ := quicClient(t, src, node, func(c *QUICClientConfig) { c.PeerCheck, c.OnCut = src.CheckPeer, l.add })
		return c, l
	}
	dial := func(c *QUICClient) net.Conn {
		conn, err := c.Dial(context.Background(), ts.addr, header("web-1"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		roundTrip(t, conn, "hello")
		return conn
	}
	a := testSource(testSVID(t, root, "s", "node-a"), root.Bundle())
	e := testSource(testSVID(t, short, "s", "node-e"), root.Bundle())
	ca, _ := client(a, "node-a")
	ce, _ := client(e, "node-e")
	aConn, eConn := dial(ca), dial(ce)

	// Revoked, in the gap: the next stream cuts the connection.
	aID := a.SVID().ID
	srvSrc.SetDenied([]string{aID.String()})
	if _, err := ca.Dial(context.Background(), ts.addr, header("web-1")); err == nil {
		t.Fatal("a revoked peer's new QUIC stream was served")
	}
	readFails(t, "the revoked peer's QUIC stream", aConn)
	// Revalidate finds nothing more to cut for a.
	if n := ts.Revalidate(); n != 0 {
		t.Fatalf("Revalidate cut %d more", n)
	}

	// Expired: node-e's chain (its 3 s intermediate).
	notAfter := e.SVID().Certificates[1].NotAfter
	err := func() error {
		eConn.SetReadDeadline(notAfter.Add(cutBound))
		_, err := eConn.Read(make([]byte, 1))
		return err
	}()
	if err == nil || isTimeout(err) || time.Now().Before(notAfter) {
		t.Fatalf("expired peer's QUIC stream at %s (expiry %s): %v", time.Now(), notAfter, err)
	}
	eventually(t, "the QUIC server's cuts (revoked, then expired)", func() bool {
		var reasons []string
		for _, c := range srvCuts.get() {
			reasons = append(reasons, c.Reason)
		}
		return len(reasons) == 2 && reasons[0] == CutRevoked && reasons[1] == CutExpired
	})
	var zero spiffeid.ID
	for _, c := range srvCuts.get() {
		if c.Peer == zero {
			t.Fatalf("cut without a peer: %+v", c)
		}
	}
}

// TestLateSessionRetiredAfterPeerRenews: a session opened after its
// peer's certificate passed retireAt (the peer had not renewed yet: it
// renews a few milliseconds later, as when both nodes renew at the same
// moment and the dialer's RetireAll comes first) is still retired before
// that certificate expires, so streams move to a session presenting the
// renewed one and the expiry cuts none in flight. It used to stay in use
// until the expiry cut its streams (seen in the agent's
// TestNodeRenewalNoFailedRequest: 3 TCP requests failed with EOF).
func TestLateSessionRetiredAfterPeerRenews(t *testing.T) {
	ca := testCA(t, "", nil)
	const life = 4 * time.Second
	work := serveWorkload(t, "127.0.0.1:0", slowEcho(150*time.Millisecond))
	srv := testSource(ttlSVID(t, ca, "s", "b", life), ca.Bundle())
	ts, _ := cutServer(t, srv, mapDialer{"web-1": work})
	cli := testSource(ttlSVID(t, ca, "s", "a", time.Hour), ca.Bundle())
	c, cliCuts := cutClient(t, cli, "a")

	old := srv.SVID().Certificates[0]
	retireAt := old.NotAfter.Add(-renewMargin(old))
	testenv.WaitFor(t, 2*life, "the server certificate's retireAt to pass", func() bool { return time.Now().After(retireAt) })
	if time.Until(old.NotAfter) < life/8 {
		t.Skipf("only %v left before the expiry: too slow to open a late session before it", time.Until(old.NotAfter))
	}
	conn, err := c.Dial(context.Background(), ts.addr, header("web-1")) // the late session, on the old certificate
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, conn, "late")
	conn.Close()
	srv.SetSVID(ttlSVID(t, ca, "s", "b", life)) // the peer renews just after

	// Two loops keep a stream of 150 ms in flight until past the expiry.
	var wg sync.WaitGroup
	var ok atomic.Int64
	var errMu sync.Mutex
	var errs []error
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(old.NotAfter.Add(300 * time.Millisecond)) {
				err := func() error {
					conn, err := c.Dial(context.Background(), ts.addr, header("web-1"))
					if err != nil {
						return err
					}
					defer conn.Close()
					conn.SetDeadline(time.Now().Add(3 * time.Second))
					if _, err := io.WriteString(conn, "req"); err != nil {
						return err
					}
					_, err = io.ReadFull(conn, make([]byte, 3))
					return err
				}()
				if err != nil {
					errMu.Lock()
					errs = append(errs, fmt.Errorf("at %s: %w", time.Now().Format("15:04:05.000"), err))
					errMu.Unlock()
				} else {
					ok.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 || ok.Load() == 0 {
		t.Fatalf("%d streams failed (%d succeeded) around the expiry of the late session's certificate at %s (client cuts %+v): %v",
			len(errs), ok.Load(), old.NotAfter.Format("15:04:05.000"), cliCuts.get(), errs)
	}
}
