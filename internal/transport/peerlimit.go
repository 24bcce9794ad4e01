package transport

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// The per-peer cap on inbound streams. Every stream a peer opens here
// holds a goroutine or more, a connection to a workload (a socket; for a
// udp flow a UDP socket and two datagram buffers) and up to a stream
// window of buffered bytes, for as long as the peer keeps it open. yamux
// has no limit on a session's streams, a peer may open any number of
// sessions and QUIC connections (QUIC's MaxIncomingStreams is per
// connection), and in insecure mode each direct stream is a connection of
// its own: without a cap, one authenticated peer could pin this agent's
// file descriptors and memory. So the servers that share a PeerStreams
// (the TCP mesh port and the QUIC servers of punched and relayed paths)
// count each peer's open streams together, from their accept to their
// end, and answer a stream past the cap at once with StatusRefused and
// the reason, without reading its header: the source agent then tries
// another endpoint. Per stream that costs two atomic adds; the map of
// peers is touched once per session or QUIC connection (and per direct
// stream, which is a connection anyway).

// DefaultMaxStreamsPerPeer is how many streams one peer agent may have
// open at once by default: what QUIC allows one connection
// (defaultQUICMaxStreams), over all of the peer's carriers.
const DefaultMaxStreamsPerPeer = 1024

// maxSessionsPerPeer bounds the yamux sessions and QUIC connections one
// peer may have open here at once, whatever they carry: each holds read
// buffers (64 KiB over TLS) and goroutines even without a stream. A peer
// needs one per path and a few more while retired ones drain (a relay
// allows 16 per pair); the next is closed at once. Lifted with the stream
// cap (a negative max).
const maxSessionsPerPeer = 64

// errPeerStreams is why a stream past its peer's cap was refused, and
// errPeerSessions why a session or QUIC connection was.
var (
	errPeerStreams  = errors.New("too many streams from this peer")
	errPeerSessions = fmt.Errorf("too many sessions from this peer (at most %d)", maxSessionsPerPeer)
)

// PeerStreams counts the inbound streams each peer agent has open at the
// mesh servers that share it (ServerConfig.PeerStreams), and refuses a
// peer's streams past the cap. A peer is its node SPIFFE ID, or in
// insecure mode its IP address (agents that share an address share the
// cap). It is safe for concurrent use.
type PeerStreams struct {
	max      int64            // <= 0: no cap (on sessions either)
	refused  *metrics.Counter // fogmesh_agent_peer_stream_limit_rejections_total
	sessions *metrics.Counter // fogmesh_agent_peer_session_limit_rejections_total
	msg      string           // the refusal's status message
	buf      peerBuffer       // the budget of yamux stream windows (peerbuffer.go)

	mu    sync.Mutex // guards the following
	peers map[string]*peerCount
}

// peerCount is one peer's open streams.
type peerCount struct {
	key      string       // the peer's key in PeerStreams.peers (peerStreamsKey)
	open     atomic.Int64 // streams from their accept to their end
	refs     int          // guarded by PeerStreams.mu: its sessions, connections and direct streams
	sessions int          // guarded by PeerStreams.mu: its sessions and QUIC connections
	yamux    peerSessions // its live yamux sessions, for the buffer budget (peerbuffer.go)
}

// NewPeerStreams returns a cap of max streams per peer (0:
// DefaultMaxStreamsPerPeer; negative: no cap) and a budget of buffer
// bytes per peer of stream windows held by its yamux sessions (0: twice
// the cap's windows, none without a cap; negative: none; peerbuffer.go),
// that count their refusals in set's fogmesh_agent_peer_*_total (nil: a
// private set).
func NewPeerStreams(max, buffer int, set *metrics.Set) *PeerStreams {
	if max == 0 {
		max = DefaultMaxStreamsPerPeer
	}
	if set == nil {
		set = metrics.NewSet()
	}
	return &PeerStreams{
		max:      int64(max),
		refused:  set.GetOrCreateCounter(`fogmesh_agent_peer_stream_limit_rejections_total`),
		sessions: set.GetOrCreateCounter(`fogmesh_agent_peer_session_limit_rejections_total`),
		msg:      fmt.Sprintf("%v: at most %d open at once", errPeerStreams, max),
		buf:      newPeerBuffer(buffer, int64(max), set),
		peers:    make(map[string]*peerCount),
	}
}

// join returns the count of peer key, held by a direct stream of the
// peer until leave.
func (l *PeerStreams) join(key string) *peerCount {
	pc, _ := l.joinAs(key, false)
	return pc
}

// joinSession is join for a session or QUIC connection: nil (counted)
// when the peer has maxSessionsPerPeer open.
func (l *PeerStreams) joinSession(key string) *peerCount {
	pc, ok := l.joinAs(key, true)
	if !ok {
		l.sessions.Inc()
		return nil
	}
	return pc
}

func (l *PeerStreams) joinAs(key string, session bool) (*peerCount, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	pc := l.peers[key]
	if pc == nil {
		pc = &peerCount{key: key}
		l.peers[key] = pc
	}
	if session {
		if l.max > 0 && pc.sessions >= maxSessionsPerPeer {
			return pc, false
		}
		pc.sessions++
	}
	pc.refs++
	return pc, true
}

// leave ends a join (session: a joinSession); the last one forgets the
// peer.
func (l *PeerStreams) leave(key string, pc *peerCount, session bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if session {
		pc.sessions--
	}
	if pc.refs--; pc.refs == 0 {
		delete(l.peers, key)
	}
}

// acquire takes a place for a new stream of pc, until release; false
// (counted) when the peer has max open.
func (l *PeerStreams) acquire(pc *peerCount) bool {
	if l.max <= 0 {
		return true
	}
	if pc.open.Add(1) > l.max {
		pc.open.Add(-1)
		l.refused.Inc()
		return false
	}
	return true
}

// release gives back a place acquire took.
func (l *PeerStreams) release(pc *peerCount) {
	if l.max > 0 {
		pc.open.Add(-1)
	}
}

// peerStreamsKey is what identifies the peer at the other end of conn: its node
// ID once authenticated, else its IP address.
func peerStreamsKey(conn net.Conn, p Peer) string {
	if !p.ID.IsZero() {
		return p.ID.String()
	}
	addr := conn.RemoteAddr().String()
	if host, _, err := net.SplitHostPort(addr); err == nil {
		return host
	}
	return addr
}

// refuseOverCap answers a stream past its peer's cap with StatusRefused
// and msg (l.msg, or the buffer budget's: refuseOverLimit; it starts with
// errPeerStreams, which the client recognizes), and closes it, without reading its header (the accept
// loop calls it: it must not wait on the peer). The write is bounded by
// HeaderTimeout; it only waits if the peer stopped reading its session.
func (s *Server) refuseOverCap(c meshStream, msg string) {
	s.m.streams[resultRefused].Inc()
	c.SetWriteDeadline(time.Now().Add(s.cfg.HeaderTimeout))
	WriteStatus(c, StatusRefused, msg)
	c.Close()
	s.log.Debug("mesh: stream refused", "peer", c.RemoteAddr().String(), "err", errPeerStreams)
}
