package control

import (
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// Timing of the write path inside the control plane, so its tail can be
// read from /metrics instead of from a load tool's view:
//
//	fogmesh_control_admin_write_seconds{phase}: an admin apply or delete,
//	  by phase (decode, store: the commit; log; audit: the records and
//	  their flush; answer: the HTTP answer written) and in total.
//	fogmesh_control_push_seconds: a commit until the update holding it is
//	  written to every stream it woke (feed.go, pushTracker).

// adminPhaseNames are the phases of an admin write, in order.
var adminPhaseNames = []string{"decode", "store", "log", "audit", "answer", "total"}

// slowAdminWrite is how long an admin write may take before its phases
// are logged (a warning: something stalled the write path).
const slowAdminWrite = time.Second

type timing struct {
	admin map[string]*metrics.Histogram // by phase
	push  *metrics.Histogram
	slow  time.Duration // log admin writes slower than this
}

func (s *Server) initTiming() {
	m := s.cfg.Metrics
	s.timing.admin = map[string]*metrics.Histogram{}
	for _, p := range adminPhaseNames {
		s.timing.admin[p] = m.NewHistogram(`fogmesh_control_admin_write_seconds{phase="` + p + `"}`)
	}
	s.timing.push = m.NewHistogram(`fogmesh_control_push_seconds`)
	s.timing.slow = slowAdminWrite
}

// phases times one admin write; mark ends the phase named, done records
// the total.
type phases struct {
	s     *Server
	start time.Time
	last  time.Time
	took  [8]time.Duration
	names [8]string
	n     int
}

func (s *Server) adminPhases() *phases {
	now := time.Now()
	return &phases{s: s, start: now, last: now}
}

func (p *phases) mark(name string) {
	now := time.Now()
	d := now.Sub(p.last)
	p.last = now
	if h := p.s.timing.admin[name]; h != nil {
		h.Update(d.Seconds())
	}
	if p.n < len(p.took) {
		p.took[p.n], p.names[p.n] = d, name
		p.n++
	}
}

func (p *phases) done(action string) {
	total := p.last.Sub(p.start)
	p.s.timing.admin["total"].Update(total.Seconds())
	if total < p.s.timing.slow {
		return
	}
	args := []any{"action", action, "total", total}
	for i := range p.n {
		args = append(args, p.names[i], p.took[i])
	}
	p.s.log.Warn("control: slow admin write", args...)
}
