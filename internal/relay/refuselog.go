package relay

import (
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
// it within refusalLogEvery per reason.
func (s *Server) refuseNode(reason string, node spiffeid.ID, msg string) {
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
	s.log.Warn("relay: refused", "reason", reason, "node", node.String(), "message", msg, "notLoggedBefore", missed)
}
