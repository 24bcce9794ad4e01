package relay

import (
	"context"
	"crypto/tls"
	"net"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/proxy"
)

// session is one relayed session: X dialed, Y is asked to accept.
type session struct {
	id     string
	x, y   *node
	accept chan acceptedConn // Y's data connection, handed over once
}

type acceptedConn struct {
	raw net.Conn
	tc  *tls.Conn
}

// serveData runs a data connection's first frame: Dial or Accept. It
// reports whether the connection was handed over to a session (then the
// session owns it).
func (s *Server) serveData(raw net.Conn, tc *tls.Conn, id spiffeid.ID) bool {
	raw.SetReadDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	f, err := ReadFrame(tc)
	if err != nil {
		if r := frameReason(err); r != "" {
			s.refuse(r)
		}
		return false
	}
	raw.SetReadDeadline(time.Time{})
	switch f.Type {
	case TypeDial:
		var m Dial
		if err := f.Decode(&m); err != nil {
			s.refuse(frameReason(err))
			return false
		}
		return s.dial(raw, tc, id, &m)
	case TypeAccept:
		var m Accept
		if err := f.Decode(&m); err != nil {
			s.refuse(frameReason(err))
			return false
		}
		return s.accept(raw, tc, id, &m)
	}
	s.refuse(ReasonUnexpected)
	return false
}

// dataRefuse writes an Error frame to a data connection (best effort).
func (s *Server) dataRefuse(raw net.Conn, tc *tls.Conn, e *Error) {
	id, _ := identity.PeerID(tc.ConnectionState())
	s.refuseNode(e.Reason, id, e.Message)
	raw.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
	WriteFrame(tc, TypeError, e)
}

// dial runs X's side of a session: checks, asks Y over its control
// connection, waits for Y's data connection and has splice relay the two.
// It reports whether it handed X's connection over (to splice).
func (s *Server) dial(raw net.Conn, tc *tls.Conn, x spiffeid.ID, m *Dial) bool {
	y, err := spiffeid.FromString(m.Peer)
	if err != nil {
		s.dataRefuse(raw, tc, &Error{Reason: ReasonBadRequest, Message: "peer: " + err.Error()})
		return false
	}
	if r := s.authorize(x, y); r != "" {
		s.dataRefuse(raw, tc, &Error{Reason: r, Message: "may not reach " + y.String()})
		return false
	}
	s.mu.Lock()
	yn := s.nodes[y.String()]
	if yn == nil || yn.ctrl == nil {
		s.mu.Unlock()
		s.dataRefuse(raw, tc, &Error{Reason: ReasonNotConnected, Message: y.String() + " is not connected to this relay"})
		return false
	}
	xn := s.nodeLocked(x)
	if xn.sessions >= s.cfg.MaxSessionsPerNode || yn.sessions >= s.cfg.MaxSessionsPerNode {
		s.gcLocked(xn)
		s.mu.Unlock()
		s.dataRefuse(raw, tc, &Error{Reason: ReasonSessionLimit, Message: "too many relayed sessions"})
		return false
	}
	if e := s.pairRefusalLocked(xn, yn); e != nil {
		s.gcLocked(xn)
		s.mu.Unlock()
		s.dataRefuse(raw, tc, e)
		return false
	}
	ss := &session{id: newID(), x: xn, y: yn, accept: make(chan acceptedConn, 1)}
	xn.sessions++
	yn.sessions++
	s.pairAddLocked(xn, yn, 1)
	s.pending[ss.id] = ss
	yc := yn.ctrl
	s.mu.Unlock()
	// release frees the session's slots; it runs before any refusal is
	// written, so a dialer that retries at once finds them free.
	var released bool
	release := func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if released {
			return
		}
		released = true
		delete(s.pending, ss.id)
		xn.sessions--
		yn.sessions--
		s.pairAddLocked(xn, yn, -1)
		s.gcLocked(xn)
		s.gcLocked(yn)
	}
	spliced := false // splice owns the session from then on
	defer func() {
		if !spliced {
			release()
		}
	}()

	if !s.send(yc, TypeIncoming, &Incoming{Session: ss.id, Peer: x.String()}) {
		release()
		s.dataRefuse(raw, tc, &Error{Session: ss.id, Reason: ReasonNotConnected, Message: y.String() + " is not reading its relay connection"})
		return false
	}
	timer := time.NewTimer(s.cfg.AcceptTimeout)
	defer timer.Stop()
	var yconn acceptedConn
	select {
	case yconn = <-ss.accept:
	case <-timer.C:
	case <-s.ctx.Done():
	}
	if yconn.raw == nil {
		s.mu.Lock()
		taken := s.pending[ss.id] == nil
		delete(s.pending, ss.id)
		s.mu.Unlock()
		if !taken {
			release()
			s.dataRefuse(raw, tc, &Error{Session: ss.id, Reason: ReasonAcceptTimeout, Message: y.String() + " did not accept in time"})
			return false
		}
		yconn = <-ss.accept // accept won the race: its conn is in the channel
	}
	defer func() {
		if !spliced {
			s.closeConn(yconn.raw)
		}
	}()

	raw.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
	yconn.raw.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
	if WriteFrame(tc, TypeReady, &Ready{Session: ss.id, Peer: y.String()}) != nil ||
		WriteFrame(yconn.tc, TypeReady, &Ready{Session: ss.id, Peer: x.String()}) != nil {
		return false
	}
	raw.SetWriteDeadline(time.Time{})
	yconn.raw.SetWriteDeadline(time.Time{})

	spliced = true
	s.wg.Add(1)
	go s.splice(ss, raw, tc, yconn, release)
	return true
}

// splice relays a ready session until it ends, then frees it. It runs in
// a goroutine of its own so the dialer's, whose stack grew in the TLS
// handshake, ends: an idle session holds two small stacks.
func (s *Server) splice(ss *session, raw net.Conn, tc *tls.Conn, yconn acceptedConn, release func()) {
	defer s.wg.Done()
	defer release()
	defer s.closeConn(raw)
	defer s.closeConn(yconn.raw)
	s.mu.Lock()
	s.active++
	s.mu.Unlock()
	s.mSessionsTotal.Inc()
	defer func() {
		s.mu.Lock()
		s.active--
		s.mu.Unlock()
	}()
	// Each side's reads are charged to its sender's bucket; proxy.Relay
	// copies through one buffer per direction (2 KiB while idle, a pooled
	// 32 KiB one during a burst), so a side that stops reading stops the
	// other side's reads (TCP backpressure), never a growing queue here,
	// and an idle session holds no large buffer.
	a := &meteredConn{Conn: tc, s: s, session: ss.id, bucket: ss.x.bucket, ctx: s.ctx}
	b := &meteredConn{Conn: yconn.tc, s: s, session: ss.id, bucket: ss.y.bucket, ctx: s.ctx}
	wa, wb := proxy.WithIdleTimeout(a, b, s.cfg.IdleTimeout)
	proxy.Relay(s.ctx, wa, wb)
}

// accept hands Y's data connection to the pending session it names.
func (s *Server) accept(raw net.Conn, tc *tls.Conn, y spiffeid.ID, m *Accept) bool {
	s.mu.Lock()
	ss := s.pending[m.Session]
	if ss == nil || ss.y.id != y {
		s.mu.Unlock()
		// The same answer whether the session does not exist or is
		// someone else's: no probing for sessions.
		s.dataRefuse(raw, tc, &Error{Session: m.Session, Reason: ReasonUnknownSession, Message: "no such session waiting for you"})
		return false
	}
	delete(s.pending, m.Session)
	s.mu.Unlock()
	ss.accept <- acceptedConn{raw: raw, tc: tc} // buffered, one send ever
	return true
}

// meteredConn counts the bytes read from a session's side, charges them
// to the sender's token bucket and shows them to the test tap.
type meteredConn struct {
	net.Conn
	s       *Server
	session string
	bucket  *bucket
	ctx     context.Context
}

func (c *meteredConn) Read(p []byte) (int, error) {
	if c.bucket != nil && int64(len(p)) > c.bucket.burst {
		p = p[:c.bucket.burst]
	}
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.s.mBytes.Add(n)
		if c.s.tap != nil {
			c.s.tap(c.session, p[:n])
		}
		if c.bucket != nil {
			if d := c.bucket.take(int64(n)); d > 0 {
				t := time.NewTimer(d)
				select {
				case <-t.C:
				case <-c.ctx.Done():
					t.Stop()
				}
			}
		}
	}
	return n, err
}

// CloseWrite half-closes the outer TLS connection (close_notify), so the
// peer's read ends with EOF as if the other agent had half-closed.
func (c *meteredConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// bucket is a token bucket of bytes shared by a node's sessions. take
// charges n bytes and returns how long the caller must wait before it may
// read again (the debt at the fill rate).
type bucket struct {
	rate, burst int64
	now         func() time.Time

	mu     sync.Mutex // guards the following
	tokens float64
	last   time.Time
}

func newBucket(rate, burst int64, now func() time.Time) *bucket {
	return &bucket{rate: rate, burst: burst, now: now, tokens: float64(burst), last: now()}
}

func (b *bucket) take(n int64) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refillLocked()
	b.tokens -= float64(n)
	if b.tokens >= 0 {
		return 0
	}
	return time.Duration(-b.tokens / float64(b.rate) * float64(time.Second))
}

// allow charges n bytes if the bucket holds them, and reports whether it
// did: a datagram over the budget is dropped, not delayed.
func (b *bucket) allow(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refillLocked()
	if b.tokens < float64(n) {
		return false
	}
	b.tokens -= float64(n)
	return true
}

func (b *bucket) refillLocked() {
	now := b.now()
	b.tokens += now.Sub(b.last).Seconds() * float64(b.rate)
	b.last = now
	if b.tokens > float64(b.burst) {
		b.tokens = float64(b.burst)
	}
}
