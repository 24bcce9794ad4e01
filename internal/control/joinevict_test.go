package control

import (
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/store"
	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// startGated starts a secure control plane whose sync port takes 3
// handshakes at once, 2 from one source.
func startGated(t *testing.T) *Server {
	t.Helper()
	s := serveControl(t, Config{StateDir: t.TempDir(), AdminAddr: "127.0.0.1:0", SyncAddr: "127.0.0.1:0",
		HeartbeatInterval: 200 * time.Millisecond, SyncMaxHandshakes: 3, SyncMaxHandshakesPerSource: 2})
	return s
}

// joinConn opens a join connection (TLS done) from the local address from.
func joinConn(t *testing.T, s *Server, from, tok string) *tls.Conn {
	t.Helper()
	p, err := identity.ParseToken(tok)
	if err != nil {
		t.Fatal(err)
	}
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	jc, err := tls.DialWithDialer(d, "tcp", s.SyncAddr(), identity.JoinClientConfig(p.Pin, nil))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { jc.Close() })
	return jc
}

// TestEvictedJoinKeepsToken: a join whose token checked out is pinned in
// the sync port's gate: a newcomer from a fairer source evicts its
// source's other (silent) connection instead, the next one is refused as
// busy, and the join is answered, its token used once. Before, the gate
// evicted the join while its store commit was pending: the server still
// marked the single-use token used, the node never got its certificate,
// and its retry was refused "token already used".
func TestEvictedJoinKeepsToken(t *testing.T) {
	s := startGated(t)
	tok, err := s.CreateToken(identity.TokenJoin, "s1", "", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	const a = "127.69.9.1"
	jc := joinConn(t, s, a, tok)
	sa := testenv.DialSilent(t, 1, a, s.SyncAddr())            // a: 2, the join its oldest
	sb := testenv.DialSilent(t, 1, "127.69.9.2", s.SyncAddr()) // b: 1; full
	testenv.WaitFor(t, 5*time.Second, "the gate full", func() bool { return syncHandshakes(s) == 3 })
	started, unblock := make(chan struct{}), make(chan struct{}) // a slow store commit
	go s.st.UpdateSecure(func(*store.SecureTx) error { close(started); <-unblock; return nil })
	<-started
	unblocked := false
	defer func() {
		if !unblocked {
			close(unblock)
		}
	}()
	pinned := make(chan struct{})
	hook := func() { close(pinned) }
	s.sec.joinPinned.Store(&hook)
	key, _ := identity.NewKey()
	csr, _ := identity.NewCSR(key)
	node := &api.Node{Meta: api.Meta{Name: "n1"}, Spec: api.NodeSpec{Site: "s1", Region: "r"}}
	if err := wire.Write(jc, &wire.Message{Type: wire.TypeJoin, Token: tok, CSR: csr, Node: node}); err != nil {
		t.Fatal(err)
	}
	select { // join message read, token checked, slot pinned; its commit will wait
	case <-pinned:
	case <-time.After(5 * time.Second):
		t.Fatal("the join was not pinned")
	}

	// c (0+1 < 2) evicts a's oldest evictable connection: the silent one,
	// not the pinned join.
	sc := testenv.DialSilent(t, 1, "127.69.9.3", s.SyncAddr())
	testenv.WaitFor(t, 5*time.Second, "a's silent connection evicted", func() bool {
		return sa.ClosedByPeer() == 1 && s.TLSFailures(identity.ReasonEvicted) == 1
	})
	testenv.WaitFor(t, 5*time.Second, "c's slot", func() bool { return syncHandshakes(s) == 3 })
	// a 1 (pinned), b 1, c 1: d (0+1 < 1 fails) is refused as busy.
	sd := testenv.DialSilent(t, 1, "127.69.9.4", s.SyncAddr())
	testenv.WaitFor(t, 5*time.Second, "d refused as busy", func() bool {
		return sd.ClosedByPeer() == 1 && s.TLSFailures(identity.ReasonBusy) == 1
	})
	if sb.ClosedByPeer() != 0 || sc.ClosedByPeer() != 0 || s.TLSFailures(identity.ReasonEvicted) != 1 {
		t.Fatalf("b %d, c %d closed, %d evicted: want 0, 0, 1", sb.ClosedByPeer(), sc.ClosedByPeer(), s.TLSFailures(identity.ReasonEvicted))
	}

	close(unblock)
	unblocked = true
	jc.SetDeadline(time.Now().Add(5 * time.Second))
	m, err := wire.NewReader(jc).Read()
	if err != nil || m.Type != wire.TypeJoined {
		t.Fatalf("the pinned join: %v %+v, want joined", err, m)
	}
	if ok, refused := counter(s, `fogmesh_control_joins_total{result="ok"}`), counter(s, `fogmesh_control_joins_total{result="refused"}`); ok != 1 || refused != 0 {
		t.Fatalf("joins ok %d, refused %d, want 1, 0", ok, refused)
	}
	sb.Close()
	sc.Close()
	testenv.WaitFor(t, 5*time.Second, "gate empty", func() bool { return syncHandshakes(s) == 0 })
	key2, _ := identity.NewKey()
	csr2, _ := identity.NewCSR(key2)
	if m := dialJoin(t, s, &wire.Message{Token: tok, CSR: csr2, Node: node}); m.Type != wire.TypeError || m.Error != "join refused: token "+mustTokenID(t, tok)+": token already used" {
		t.Fatalf("a second join with the token: %v %q, want refused as used", m.Type, m.Error)
	}
}

func mustTokenID(t *testing.T, tok string) string {
	t.Helper()
	p, err := identity.ParseToken(tok)
	if err != nil {
		t.Fatal(err)
	}
	return p.ID
}

// TestEvictedSilentJoinNotRefused: a join connection that finished TLS and
// sends nothing stays evictable; evicted, it is counted once, as a sync
// handshake failure of reason evicted, not as a refused join too (it was).
func TestEvictedSilentJoinNotRefused(t *testing.T) {
	s := startGated(t)
	tok, err := s.CreateToken(identity.TokenJoin, "s1", "", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	const a = "127.69.9.11"
	jc := joinConn(t, s, a, tok)
	testenv.DialSilent(t, 1, a, s.SyncAddr())             // a: 2, the join its oldest
	testenv.DialSilent(t, 1, "127.69.9.12", s.SyncAddr()) // b: 1; full
	testenv.WaitFor(t, 5*time.Second, "the gate full", func() bool { return syncHandshakes(s) == 3 })
	testenv.DialSilent(t, 1, "127.69.9.13", s.SyncAddr()) // c: 0+1 < 2 evicts the join
	jc.SetDeadline(time.Now().Add(5 * time.Second))
	if m, err := wire.NewReader(jc).Read(); err == nil {
		t.Fatalf("the evicted join connection was answered: %+v", m)
	}
	testenv.WaitFor(t, 5*time.Second, "the join evicted", func() bool { return s.TLSFailures(identity.ReasonEvicted) == 1 })
	if n := counter(s, `fogmesh_control_joins_total{result="refused"}`); n != 0 {
		t.Fatalf("joins_total{result=\"refused\"} = %d after an eviction, want 0", n)
	}
}

// TestEvictedRelayJoinPinned: a relay's join whose token checks out is
// pinned as a node's is: while it is served, a newcomer from a fairer
// source evicts its source's silent connection instead, and the relay
// gets its certificate.
func TestEvictedRelayJoinPinned(t *testing.T) {
	s := startGated(t)
	tok, err := s.CreateToken(identity.TokenRelay, "", "", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	const a = "127.69.9.21"
	jc := joinConn(t, s, a, tok)
	sa := testenv.DialSilent(t, 1, a, s.SyncAddr())             // a: 2, the join its oldest
	sb := testenv.DialSilent(t, 1, "127.69.9.22", s.SyncAddr()) // b: 1; full
	testenv.WaitFor(t, 5*time.Second, "the gate full", func() bool { return syncHandshakes(s) == 3 })
	pinned, unblock := make(chan struct{}), make(chan struct{})
	hook := func() { close(pinned); <-unblock } // holds the pinned join in serveJoin
	s.sec.joinPinned.Store(&hook)
	unblocked := false
	defer func() {
		if !unblocked {
			close(unblock)
		}
	}()
	key, _ := identity.NewKey()
	csr, _ := identity.NewCSR(key)
	if err := wire.Write(jc, &wire.Message{Type: wire.TypeJoin, Token: tok, CSR: csr, Relay: "r1"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-pinned:
	case <-time.After(5 * time.Second):
		t.Fatal("the relay's join was not pinned")
	}
	sc := testenv.DialSilent(t, 1, "127.69.9.23", s.SyncAddr()) // c: 0+1 < 2 evicts a's silent one
	testenv.WaitFor(t, 5*time.Second, "a's silent connection evicted", func() bool {
		return sa.ClosedByPeer() == 1 && s.TLSFailures(identity.ReasonEvicted) == 1
	})
	close(unblock)
	unblocked = true
	jc.SetDeadline(time.Now().Add(5 * time.Second))
	if m, err := wire.NewReader(jc).Read(); err != nil || m.Type != wire.TypeJoined {
		t.Fatalf("the pinned relay join: %v %+v, want joined", err, m)
	}
	if sb.ClosedByPeer() != 0 || sc.ClosedByPeer() != 0 {
		t.Fatalf("b %d, c %d closed, want 0, 0", sb.ClosedByPeer(), sc.ClosedByPeer())
	}
}
