package relay

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// refusalLogEvery bounds the log lines of refused requests: every refusal
// is counted (fogmesh_relay_refused_total), and logged at most once per
// reason per interval, so a node that asks in a loop cannot flood the log.
const refusalLogEvery = 10 * time.Second

// refusalLog remembers, per reason, when a refusal was last logged and how
// many were not logged since.
type refusalLog struct {
	mu     sync.Mutex
	last   map[string]time.Time
	missed map[string]int
}

// refuseNode counts a refusal of an authenticated node's request and logs
// it (Warn) within refusalLogEvery per reason.
func (s *Server) refuseNode(reason string, node spiffeid.ID, msg string) {
	s.refuseLogged(slog.LevelWarn, reason, "node", node.String(), msg)
}

// refuseConn counts a connection refused before it was authenticated (at
// its TLS handshake) and logs it within refusalLogEvery per reason, at
// Info: port scanners and load balancers' probes make these too.
func (s *Server) refuseConn(reason, remote, msg string) {
	s.refuseLogged(slog.LevelInfo, reason, "remote", remote, msg)
}

// refuseLogged counts a refusal and logs it, naming who (whoKey: node or
// remote), unless one of its reason was logged within refusalLogEvery.
func (s *Server) refuseLogged(level slog.Level, reason, whoKey, who, msg string) {
	s.refuse(reason)
	now := s.cfg.Now()
	l := &s.refusals
	l.mu.Lock()
	if l.last == nil {
		l.last, l.missed = map[string]time.Time{}, map[string]int{}
	}
	if t, ok := l.last[reason]; ok && now.Sub(t) < refusalLogEvery && now.Sub(t) > -refusalLogEvery {
		l.missed[reason]++
		l.mu.Unlock()
		return
	}
	missed := l.missed[reason]
	l.last[reason], l.missed[reason] = now, 0
	l.mu.Unlock()
	s.log.Log(context.Background(), level, "relay: refused", "reason", reason, whoKey, who, "message", msg, "notLoggedBefore", missed)
}

// frameReason is the refusal reason of a frame read error, or "" for a
// clean end of the connection.
func frameReason(err error) string {
	var fe *FrameError
	if errors.As(err, &fe) {
		return fe.Reason
	}
	return ""
}

// ReasonIntroductionLimit: a node has maxNoncesPerNode introductions in
// the replay store already.
const ReasonIntroductionLimit = "introduction_limit"

// maxNoncesPerNode is one node's share of the replay store (maxNonces):
// each introduction is remembered for 2×ReplayWindow, so one node asking
// in a loop could otherwise fill the store and stop introductions, and
// with them punching, relay-wide. 8192 in 4 minutes is 34 a second.
const maxNoncesPerNode = maxNonces / 8

// nonceSweepEvery bounds how often a full store is swept for expired
// nonces, so a node asking in a loop cannot make the relay scan the
// store for every frame.
const nonceSweepEvery = time.Second

// nonceUse counts each node's entries in Server.nonces.
type nonceUse struct {
	count     map[string]int // node ID → its nonces
	lastSweep time.Time
}

// nonceRoomLocked reports why node's next introduction cannot be
// remembered (a refusal reason and message), or "" when it can; it
// sweeps expired nonces when node's share or the store is full.
func (s *Server) nonceRoomLocked(node string, now time.Time) (string, string) {
	if len(s.nonces) >= maxNonces || s.nonceUse.count[node] >= maxNoncesPerNode {
		s.sweepNoncesLocked(now)
	}
	switch {
	case s.nonceUse.count[node] >= maxNoncesPerNode:
		return ReasonIntroductionLimit, "too many introductions from this node; retry later"
	case len(s.nonces) >= maxNonces:
		return ReasonNonceStoreFull, "too many introductions; retry later"
	}
	return "", ""
}

// rememberNonceLocked stores node's nonce until 2×ReplayWindow from now.
func (s *Server) rememberNonceLocked(node, nonce string, now time.Time) {
	if s.nonceUse.count == nil {
		s.nonceUse.count = map[string]int{}
	}
	s.nonces[node+"|"+nonce] = now.Add(2 * s.cfg.ReplayWindow)
	s.nonceUse.count[node]++
}

// sweepNoncesLocked forgets expired nonces, at most once per
// nonceSweepEvery.
func (s *Server) sweepNoncesLocked(now time.Time) {
	if d := now.Sub(s.nonceUse.lastSweep); !s.nonceUse.lastSweep.IsZero() && d >= 0 && d < nonceSweepEvery {
		return
	}
	s.nonceUse.lastSweep = now
	for k, exp := range s.nonces {
		if now.After(exp) {
			delete(s.nonces, k)
			node, _, _ := strings.Cut(k, "|")
			if s.nonceUse.count[node]--; s.nonceUse.count[node] <= 0 {
				delete(s.nonceUse.count, node)
			}
		}
	}
}
