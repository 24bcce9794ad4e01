package relay

import (
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ctrlConn is an agent's control connection. Frames to it are written
// under wmu with a deadline, so an agent that stops reading is
// disconnected instead of blocking the relay.
type ctrlConn struct {
	raw      net.Conn
	tc       *tls.Conn
	observed string // the remote address of raw: the TCP reflexive candidate
	token    string // UDP reflexive token
	// dead: a write failed and closed raw. Frames the TLS layer had
	// already buffered are not served after that.
	dead atomic.Bool

	wmu sync.Mutex
}

// send writes one frame; on failure it closes the connection (its reader
// then ends and unregisters it).
func (s *Server) send(c *ctrlConn, t byte, msg any) bool {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.dead.Load() {
		return false
	}
	c.raw.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
	err := WriteFrame(c.tc, t, msg)
	if err != nil {
		c.dead.Store(true)
		s.refuse(ReasonSlowReader)
		c.raw.Close()
		return false
	}
	return true
}

// serveControl runs an agent's control connection until it ends.
func (s *Server) serveControl(raw net.Conn, tc *tls.Conn, id spiffeid.ID) {
	c := &ctrlConn{raw: raw, tc: tc, observed: canonicalAddr(raw.RemoteAddr()), token: newID()}
	s.mu.Lock()
	n := s.nodeLocked(id)
	old := n.ctrl
	n.ctrl = c
	s.tokens[c.token] = id.String()
	s.mu.Unlock()
	if old != nil {
		old.raw.Close() // a reconnect replaces the old connection
	}
	s.log.Debug("relay: node connected", "node", id.String(), "observed", c.observed)
	defer func() {
		s.closeUDPOf(c)
		s.mu.Lock()
		delete(s.tokens, c.token)
		if n.ctrl == c {
			n.ctrl = nil
			s.gcLocked(n)
		}
		s.mu.Unlock()
	}()
	if !s.send(c, TypeHello, &Hello{Node: id.String(), Observed: c.observed, UDPToken: c.token}) {
		return
	}
	for !c.dead.Load() {
		raw.SetReadDeadline(time.Now().Add(s.cfg.ControlTimeout))
		f, err := ReadFrame(tc)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				s.refuse(ReasonControlTimeout)
				return
			}
			if r := frameReason(err); r != "" {
				s.refuse(r)
				s.log.Info("relay: bad frame, closing", "node", id.String(), "reason", r, "err", err)
			}
			return
		}
		s.mu.Lock()
		replaced := n.ctrl != c
		s.mu.Unlock()
		if replaced {
			return // a reconnect replaced it: frames still buffered in its TLS reader act no more
		}
		switch f.Type {
		case TypeCandidates:
			var m Candidates
			if err := f.Decode(&m); err != nil {
				s.refuse(frameReason(err))
				return
			}
			s.mu.Lock()
			n.candidates = m.Candidates
			s.mu.Unlock()
		case TypePing:
			var m Ping
			if err := f.Decode(&m); err != nil {
				s.refuse(frameReason(err))
				return
			}
			s.send(c, TypePong, &Pong{ID: m.ID})
		case TypeIntroduce:
			var m Introduce
			if err := f.Decode(&m); err != nil {
				s.refuse(frameReason(err))
				return
			}
			s.introduce(c, id, &m)
		case TypeUDPBind:
			var m UDPBind
			if err := f.Decode(&m); err != nil {
				s.refuse(frameReason(err))
				return
			}
			s.bindUDP(c, id, &m)
		case TypeUDPClose:
			var m UDPClose
			if err := f.Decode(&m); err != nil {
				s.refuse(frameReason(err))
				return
			}
			s.closeUDPFrom(c, &m)
		default:
			s.refuse(ReasonUnexpected)
			return
		}
	}
}

// introduce handles X's Introduce: if allowed and fresh, Y gets X's
// candidates and X gets Y's, both under X's nonce.
func (s *Server) introduce(xc *ctrlConn, x spiffeid.ID, m *Introduce) {
	refuse := func(reason, msg string) {
		s.refuseNode(reason, x, msg)
		s.send(xc, TypeError, &Error{Nonce: m.Nonce, Reason: reason, Message: msg})
	}
	y, err := spiffeid.FromString(m.Peer)
	if err != nil {
		refuse(ReasonBadRequest, "peer: "+err.Error())
		return
	}
	now := s.cfg.Now()
	if d := now.Sub(time.UnixMilli(m.Time)); d > s.cfg.ReplayWindow || d < -s.cfg.ReplayWindow {
		refuse(ReasonReplay, "introduction time outside the replay window (clock skew or replay)")
		return
	}
	if r := s.authorize(x, y); r != "" {
		refuse(r, "may not reach "+y.String())
		return
	}
	s.mu.Lock()
	key := x.String() + "|" + m.Nonce
	if _, seen := s.nonces[key]; seen {
		s.mu.Unlock()
		refuse(ReasonReplay, "nonce already used")
		return
	}
	if r, msg := s.nonceRoomLocked(x.String(), now); r != "" {
		s.mu.Unlock()
		refuse(r, msg)
		return
	}
	s.rememberNonceLocked(x.String(), m.Nonce, now)
	xn := s.nodes[x.String()]
	if xn == nil || xn.ctrl != xc {
		s.mu.Unlock()
		refuse(ReasonNotConnected, "this control connection was replaced by another of the node's")
		return
	}
	yn := s.nodes[y.String()]
	var yc *ctrlConn
	var xCands, yCands []string
	if yn != nil && yn.ctrl != nil {
		yc = yn.ctrl
		xCands = withReflexive(m.Candidates, xc.observed, xn.udpObserved)
		yCands = withReflexive(yn.candidates, yc.observed, yn.udpObserved)
	}
	s.mu.Unlock()
	if yc == nil {
		refuse(ReasonNotConnected, y.String()+" is not connected to this relay")
		return
	}
	s.mIntroductions.Inc()
	s.send(yc, TypeIntroduced, &Introduced{Nonce: m.Nonce, Peer: x.String(), Candidates: xCands})
	s.send(xc, TypeIntroduced, &Introduced{Nonce: m.Nonce, Peer: y.String(), Candidates: yCands})
}

// withReflexive appends the observed addresses to an agent's own
// candidates, without duplicates, within MaxCandidates.
func withReflexive(own []string, observed ...string) []string {
	out := slices.Clone(own)
	for _, o := range observed {
		if o != "" && !slices.Contains(out, o) {
			out = append(out, o)
		}
	}
	if len(out) > MaxCandidates {
		out = out[len(out)-MaxCandidates:] // keep the reflexive ones
	}
	return out
}

// canonicalAddr renders a net.Addr as host:port with IPv4-mapped IPv6
// addresses unmapped.
func canonicalAddr(a net.Addr) string {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return a.String()
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String()
}
