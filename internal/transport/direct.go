package transport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Direct streams (insecure mode only). A relayed TCP connection carried as
// a yamux stream is copied through user space twice per agent (socket to
// yamux buffer, yamux frame to socket), however large its flow. With
// ClientConfig.DirectStreams, a stream whose header does not have UDP set
// gets a TCP connection of its own to the peer's mesh port instead: a
// relayed connection, and an HTTP proxy's pooled upstream connection (L7),
// whose requests then skip yamux's framing and its goroutine hand-offs on
// both agents (HTTP/1.1 through two agents, bench/memory.sh: about 17,000
// -> 20,000 requests/s for less CPU). A UDP stream's datagrams stay on the
// session, framed.
// It speaks the same stream format (header, then status, then the relayed
// bytes), so the server tells it from a yamux session by its first byte:
// Magic's 'F', where every yamux frame starts with version 0. Both agents
// then relay it between two TCP sockets, which splice(2) moves inside the
// kernel. With TLS every connection carries a yamux session, as before.
//
// A direct stream costs one TCP handshake with the peer per connection
// relayed (on loopback about 40 µs, BenchmarkMeshDial; across a WAN, one
// round trip) where a yamux stream reuses the session, one socket per
// stream on each agent, and a socket in TIME_WAIT after it (directRate). An agent that predates direct streams closes such a connection
// unanswered (its yamux session refuses the magic); the client then opens
// its streams to that peer on the session for noDirectFor.

// ErrNoDirect is what a DirectDialer returns for a path that cannot carry
// a direct stream (a relayed session): the stream opens on the session.
var ErrNoDirect = errors.New("path carries no direct streams")

// DirectDialer is implemented by a ClientConfig.Network that dials a
// session key rather than an address (package paths): it connects a
// direct stream's own connection to the peer. A Network without it is
// dialed at meshAddr.
type DirectDialer interface {
	DialDirect(ctx context.Context, meshAddr string) (net.Conn, error)
}

// direct reports whether a stream for h gets its own connection.
func (c *Client) direct(h Header) bool {
	return c.cfg.DirectStreams && c.cfg.TLS == nil && !h.UDP
}

// dialDirect opens a direct stream to p, the peer at meshAddr (held by the
// caller), for h. ok is false when the path cannot carry one: the caller
// opens a yamux stream instead.
func (c *Client) dialDirect(ctx context.Context, p *peer, meshAddr string, h Header) (conn net.Conn, ok bool, err error) {
	if time.Now().UnixNano() < p.noDirectUntil.Load() || !p.directRate.Allow() {
		return nil, false, nil
	}
	var carrier net.Conn
	if dd, isDD := c.cfg.Network.(DirectDialer); isDD {
		carrier, err = dd.DialDirect(ctx, meshAddr)
		if errors.Is(err, ErrNoDirect) {
			return nil, false, nil
		}
	} else {
		carrier, err = c.cfg.Network.Dial(ctx, "tcp", meshAddr)
	}
	// As a session would: the path is live while its last connection
	// attempt got through (Live), whatever the peer answers later.
	p.directUp.Store(err == nil)
	if err != nil {
		if ctx.Err() == nil {
			// The connection could not be made (no local port free, a
			// lost SYN): the session, if one is up or can be dialed,
			// still carries the stream.
			c.log.Debug("mesh: direct stream not connected, opening it on the session", "peer", meshAddr, "err", err)
			return nil, false, nil
		}
		return nil, true, err
	}
	watchPeer(carrier)
	t := &directTrack{c: c, p: p, meshAddr: meshAddr}
	var ms meshStream
	switch cc := carrier.(type) {
	case *net.TCPConn:
		ms = &directTCP{TCPConn: cc, track: t}
	case meshStream:
		ms = &directConn{meshStream: cc, track: t}
	default: // an in-memory conn without half-close: no direct stream
		carrier.Close()
		return nil, false, nil
	}
	if !c.track(t, ms) {
		ms.Close()
		return nil, true, fmt.Errorf("client: %w", net.ErrClosed)
	}
	c.m.direct.Inc()
	conn, err = streamHandshake(ctx, ms, h)
	switch {
	case err == nil:
		if rtt, ok := tcpRTT(carrier); ok {
			p.observeRTT(rtt)
		}
	case ctx.Err() == nil && !t.closedByUs.Load() &&
		!errors.Is(err, ErrRefused) && !errors.Is(err, ErrDialFailed) && !errors.Is(err, ErrDenied):
		// The peer closed the connection without a status: an agent
		// that predates direct streams (its yamux session refused the
		// magic), or one that went down. The caller tries the session
		// (dial), which tells the two apart.
		return nil, false, errNoStatus{err}
	}
	return conn, true, err
}

// errNoStatus is dialDirect's error for a direct stream the peer closed
// unanswered; dial opens the stream on the session instead.
type errNoStatus struct{ err error }

func (e errNoStatus) Error() string { return e.err.Error() }
func (e errNoStatus) Unwrap() error { return e.err }

// noDirect records that p, the peer at meshAddr, which closed a direct
// stream unanswered, answered on its session: it predates direct streams,
// and gets session streams only for noDirectFor.
func (c *Client) noDirect(p *peer, meshAddr string, why error) {
	p.noDirectUntil.Store(time.Now().Add(noDirectFor).UnixNano())
	c.log.Info("mesh: peer agent takes no direct streams, using its session", "peer", meshAddr, "err", why, "retry_in", noDirectFor)
}

// directRate caps the direct streams opened to one peer: each leaves a
// socket in TIME_WAIT for a minute on whichever agent closes first, and
// the client agent has about 28,000 ephemeral ports toward one mesh port.
// At most directPerSecond a second (bursts of as many) keep that under a
// quarter of them; streams over the rate open on the session, which
// costs no port. Short connections at high rates are what goes over it;
// a bulk connection is rarely one of many a second.
const directPerSecond = 100

// noDirectFor is how long a peer that closed a direct stream without an
// answer gets yamux streams only.
const noDirectFor = time.Minute

// directTrack is what a direct stream's conn shares with its client: it
// is closed with the client, and its bytes are reported once it closes.
// While tracked it holds its peer (refs): the peer is not pruned.
type directTrack struct {
	once     sync.Once
	c        *Client
	p        *peer
	meshAddr string
	closer   net.Conn
	// closedByUs: Client.Close or DropSession closed the conn (its
	// handshake's error says nothing of the peer).
	closedByUs atomic.Bool
}

// track registers t, whose conn is conn, until conn is closed; false if
// the client is closed.
func (c *Client) track(t *directTrack, conn net.Conn) bool {
	t.closer = conn
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	if c.directs == nil {
		c.directs = make(map[*directTrack]struct{})
	}
	c.directs[t] = struct{}{}
	t.p.refs++
	return true
}

// done untracks the conn and reports its bytes (read from raw, the
// socket, when it is one) before it closes.
func (t *directTrack) done(raw net.Conn) {
	t.once.Do(func() {
		t.c.mu.Lock()
		if _, tracked := t.c.directs[t]; tracked {
			delete(t.c.directs, t)
			t.p.refs--
		}
		t.c.mu.Unlock()
		if t.c.cfg.DirectBytes != nil {
			if in, out, ok := tcpBytes(raw); ok {
				t.c.cfg.DirectBytes(t.meshAddr, in, out)
			}
		}
	})
}

// directTCP is a direct stream over a TCP socket. It embeds the
// *net.TCPConn, whose ReadFrom and WriteTo it keeps, so that relaying it
// to another TCP connection splices.
type directTCP struct {
	*net.TCPConn
	track *directTrack
}

func (d *directTCP) Close() error {
	d.track.done(d.TCPConn)
	return d.TCPConn.Close()
}

// TCP returns the socket under the stream (proxy.RelayIdle reads idle
// times from it).
func (d *directTCP) TCP() *net.TCPConn { return d.TCPConn }

// directConn is a direct stream over any other carrier (an in-memory
// network in tests).
type directConn struct {
	meshStream
	track *directTrack
}

func (d *directConn) Close() error {
	d.track.done(d.meshStream)
	return d.meshStream.Close()
}

// plainConn tells a direct stream from a yamux session on a plaintext
// connection by its first byte: Magic's 'F', or yamux's version 0. It
// serves a direct stream to its end (served true), or returns the conn a
// session runs on. A conn that sends nothing within HeaderTimeout is
// closed (served true).
func (s *Server) plainConn(conn net.Conn, log *slog.Logger) (_ net.Conn, served bool) {
	// Server.Close ends the wait for the first byte and a direct
	// stream's header and relay; a session is closed by Close itself.
	stop := context.AfterFunc(s.ctx, func() { conn.Close() })
	defer stop()
	var first [1]byte
	conn.SetReadDeadline(time.Now().Add(s.cfg.HeaderTimeout))
	if _, err := io.ReadFull(conn, first[:]); err != nil {
		conn.Close()
		log.Debug("mesh: connection sent nothing", "err", err)
		return nil, true
	}
	conn.SetReadDeadline(time.Time{})
	if first[0] != Magic[0] {
		return &plainFrameConn{Conn: conn, first: first[0], replay: true}, false
	}
	// Clients send direct streams on direct paths only (ErrNoDirect), but
	// a relayed carrier that sends one is served the same: it is a stream
	// like any other.
	ms, ok := conn.(meshStream)
	if !ok { // no half-close: it cannot carry a stream's end
		conn.Close()
		return nil, true
	}
	s.m.direct.Inc()
	watchPeer(conn)
	key := peerStreamsKey(conn, Peer{})
	pc := s.limit.join(key)
	defer s.limit.leave(key, pc, false)
	if !s.limit.acquire(pc) {
		// Its header is read first: a socket closed with unread bytes
		// is reset, and the peer could lose the status.
		conn.SetReadDeadline(time.Now().Add(s.cfg.HeaderTimeout))
		ReadHeader(io.MultiReader(bytes.NewReader(first[:]), conn))
		s.refuseOverCap(ms, s.limit.msg)
		return nil, true
	}
	s.wg.Add(1) // the counter is > 0: serveConn holds one
	s.serveStreamFrom(s.ctx, ms, first[:], pc)
	return nil, true
}

// watchPeer makes the kernel probe c's peer after keepAliveInterval of
// silence and end c when connWriteTimeout of probes go unanswered, as a
// session's pings notice a dead peer (a direct stream's socket has only
// TCP to tell). Not TCP_USER_TIMEOUT: the kernel applies it to zero-window
// probes too, and would reset a stream whose reader paused that long.
// Bytes sent to a peer that died are retransmitted for minutes; gossip
// declaring the peer dead closes its direct streams first (DropSession).
func watchPeer(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetKeepAliveConfig(peerKeepAlive)
	}
}

var peerKeepAlive = net.KeepAliveConfig{Enable: true, Idle: keepAliveInterval, Interval: keepAliveInterval,
	Count: int(connWriteTimeout / keepAliveInterval)}
