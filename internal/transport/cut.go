package transport

import (
	"time"

	"github.com/hashicorp/yamux"
	"github.com/quic-go/quic-go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Each carrier's side of peerauth.go: Revalidate, which the agent calls
// when the deny list changes, and the cut of one session.

// Revalidate checks every session's peer again (PeerCheck, expiry) and
// cuts those that fail; it returns how many it cut. The agent calls it
// when the deny list changes: a revoked node, or every node below a
// revoked regional intermediate, loses its sessions at once.
func (s *Server) Revalidate() int {
	s.mu.Lock()
	all := make(map[*yamux.Session]*peerAuth, len(s.sessions))
	for sess, pa := range s.sessions {
		all[sess] = pa
	}
	s.mu.Unlock()
	n := 0
	for sess, pa := range all {
		if s.cutIfInvalid(sess, pa) {
			n++
		}
	}
	return n
}

// cutIfInvalid closes sess if its peer may no longer use it, and reports
// whether it did (or an earlier call did).
func (s *Server) cutIfInvalid(sess *yamux.Session, pa *peerAuth) bool {
	return cutPeer(pa, s.cfg.PeerCheck, func(reason string, err error) {
		// Reported first: the cut is on record before the peer sees it.
		reportCut(s.log, s.m, s.cfg.OnCut, Cut{Dir: "in", Peer: pa.id, Reason: reason, Err: err, Streams: sess.NumStreams()})
		pa.drains.end() // before Close wakes their reads, to spin (drain.go)
		sess.Close()
	})
}

// DropPeer closes every session of the peer with SPIFFE ID id, and with
// them their streams, and returns how many it closed. The agent calls it
// when the node is revoked.
func (s *Server) DropPeer(id spiffeid.ID) int {
	s.mu.Lock()
	var drop []*yamux.Session
	for sess, pa := range s.sessions {
		if !pa.id.IsZero() && pa.id == id {
			pa.drains.end() // before Close wakes their reads, to spin (drain.go)
			drop = append(drop, sess)
		}
	}
	s.mu.Unlock()
	for _, sess := range drop {
		sess.Close()
	}
	return len(drop)
}

// Revalidate checks every session's peer again (PeerCheck, expiry),
// retired sessions included, and cuts those that fail; it returns how
// many it cut. The agent calls it when the deny list changes.
func (c *Client) Revalidate() int {
	type entry struct {
		sess *yamux.Session
		auth *peerAuth
	}
	var all []entry
	c.mu.Lock()
	for _, p := range c.peers {
		if p.sess != nil && p.auth != nil {
			all = append(all, entry{p.sess, p.auth})
		}
	}
	for sess, r := range c.retired {
		if r.auth != nil {
			all = append(all, entry{sess, r.auth})
		}
	}
	c.mu.Unlock()
	n := 0
	for _, e := range all {
		if causeOf(e.auth.cause) == nil && c.cutIfInvalid(e.sess, e.auth) {
			n++
		}
	}
	return n
}

// cutIfInvalid closes sess if its peer may no longer use it, and reports
// whether it did (or an earlier call did). The next Dial to the peer
// handshakes again: a revoked peer is refused there.
func (c *Client) cutIfInvalid(sess *yamux.Session, pa *peerAuth) bool {
	return cutPeer(pa, c.cfg.PeerCheck, func(reason string, err error) {
		c.mu.Lock()
		for _, p := range c.peers {
			if p.sess == sess {
				p.sess = nil
			}
		}
		c.mu.Unlock()
		reportCut(c.log, c.m, c.cfg.OnCut, Cut{Dir: "out", Peer: pa.id, Reason: reason, Err: err, Streams: sess.NumStreams()})
		sess.Close()
	})
}

// cutIfInvalid closes qc if its peer may no longer use it (cutQUIC).
func (c *QUICClient) cutIfInvalid(qc *quic.Conn, pa *peerAuth) bool {
	return cutQUIC(qc, pa, "out", c.cfg.PeerCheck, c.log, c.m, c.cfg.OnCut)
}

// Revalidate checks every connection's peer again, retired ones
// included, and cuts those that fail; it returns how many it cut.
func (c *QUICClient) Revalidate() int {
	all := map[*quic.Conn]*peerAuth{}
	c.mu.Lock()
	for _, p := range c.peers {
		if p.conn != nil && p.auth != nil {
			all[p.conn] = p.auth
		}
	}
	for qc, pa := range c.retired {
		all[qc] = pa
	}
	c.mu.Unlock()
	n := 0
	for qc, pa := range all {
		if causeOf(pa.cause) == nil && c.cutIfInvalid(qc, pa) {
			n++
		}
	}
	return n
}

// RetireAll takes every connection out of use for new streams (see
// Client.RetireAll); a retired connection is closed at its peer's expiry
// or when it idles out.
func (c *QUICClient) RetireAll() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, p := range c.peers {
		if p.conn != nil && c.retireLocked(p, p.conn) {
			n++
		}
	}
	return n
}

func (c *QUICClient) retireLocked(p *quicPeer, qc *quic.Conn) bool {
	if c.closed || p.conn != qc {
		return false
	}
	p.conn = nil
	if p.auth != nil {
		c.retired[qc] = p.auth
	} else {
		c.retired[qc] = &peerAuth{}
	}
	return true
}

// Revalidate checks every connection's peer again, as Server.Revalidate
// does, and cuts those that fail; it returns how many it cut.
func (s *QUICServer) Revalidate() int {
	s.mu.Lock()
	all := make(map[*quic.Conn]*peerAuth, len(s.conns))
	for c, pa := range s.conns {
		all[c] = pa
	}
	s.mu.Unlock()
	n := 0
	for c, pa := range all {
		if causeOf(pa.cause) == nil && s.cutIfInvalid(c, pa) {
			n++
		}
	}
	return n
}

// cutIfInvalid closes conn if its peer may no longer use it (the peer
// reads the reason in the close frame), and reports whether it did (or an
// earlier call did).
func (s *QUICServer) cutIfInvalid(conn *quic.Conn, pa *peerAuth) bool {
	return cutQUIC(conn, pa, "in", s.core.cfg.PeerCheck, s.core.log, s.core.m, s.core.cfg.OnCut)
}

// afterFuncWaited is time.AfterFunc(d, f) whose stop also waits for f if
// it has begun. The servers' expiry cuts: a connection's goroutine stops
// the timer before it leaves the server's WaitGroup, so Close, which
// waits for that, returns only after a cut in progress (its log line, its
// count and OnCut: the agent's audit record, its log closed after the
// mesh) is done. time.Timer's Stop does not wait: the cut could run on
// after Close. f must not wait for the goroutine that calls stop.
func afterFuncWaited(d time.Duration, f func()) (stop func()) {
	done := make(chan struct{})
	t := time.AfterFunc(d, func() { defer close(done); f() })
	return func() {
		if !t.Stop() {
			<-done
		}
	}
}
