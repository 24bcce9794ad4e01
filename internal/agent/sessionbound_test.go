package agent

import (
	"fmt"
	"testing"

	"github.com/VictoriaMetrics/metrics"

	"github.com/fogmesh/fogmesh/internal/api"
)

// TestSessionBindingsBounded: a client sending a new session key with every
// request (a flood of random x-s values) leaves this agent's own bindings and
// those waiting to go upstream within their bounds, the newest bound.
func TestSessionBindingsBounded(t *testing.T) {
	defer func(l, p int) { maxLocalSessions, maxPendingSessions = l, p }(maxLocalSessions, maxPendingSessions)
	maxLocalSessions, maxPendingSessions = 50, 40
	a, sv := testView(t, "round-robin")
	a.sessionsChanged = make(chan struct{}, 1)
	set := metrics.NewSet()
	a.m.sessionBinds = set.NewCounter("binds")
	a.m.sessionEvictions = set.NewCounter("evictions")
	a.m.sessionsDropped = set.NewCounter("dropped")
	svc := *sv.svc
	svc.Spec.Session = &api.SessionAffinity{Header: "x-s"}
	sv.svc = &svc
	const n = 500
	for i := range n {
		a.applySession(sv, fmt.Sprintf("key-%d", i), a.pick(sv, "p"))
	}
	local, pending := a.sessionCountsForTest()
	if local > maxLocalSessions || pending > maxPendingSessions {
		t.Fatalf("after %d keys: %d local bindings (bound %d), %d pending (bound %d)", n, local, maxLocalSessions, pending, maxPendingSessions)
	}
	last := fmt.Sprintf("key-%d", n-1)
	got := a.applySession(sv, last, a.pick(sv, "p"))
	if ep := a.localSessionForTest(sv, last); ep == "" || got[0].ep.Meta.Name != ep {
		t.Errorf("newest key: bound to %q, routed to %s", ep, got[0].ep.Meta.Name)
	}
	if ep := a.localSessionForTest(sv, "key-0"); ep != "" {
		t.Errorf("oldest key still bound to %s", ep)
	}
	if a.m.sessionBinds.Get() != n {
		t.Errorf("binds %d, want %d (the newest key's second request binds nothing)", a.m.sessionBinds.Get(), n)
	}
	if got, want := a.m.sessionEvictions.Get(), uint64(n-maxLocalSessions); got != want {
		t.Errorf("evictions %d, want %d", got, want)
	}
	ss := a.takePendingSessions()
	if len(ss) != maxPendingSessions {
		t.Fatalf("took %d pending, want %d", len(ss), maxPendingSessions)
	}
	newest := false
	for _, s := range ss {
		newest = newest || s.Spec.Key == last
	}
	if !newest {
		t.Errorf("the newest binding was dropped from those to send")
	}
	// A failed send puts them back: still within the bound with newer ones.
	for i := range 10 {
		a.applySession(sv, fmt.Sprintf("later-%d", i), a.pick(sv, "p"))
	}
	a.returnPendingSessions(ss)
	if _, pending := a.sessionCountsForTest(); pending != maxPendingSessions {
		t.Errorf("%d pending after a failed send, want %d", pending, maxPendingSessions)
	}
	back := map[string]bool{}
	for _, s := range a.takePendingSessions() {
		back[s.Spec.Key] = true
	}
	for i := range 10 {
		if !back[fmt.Sprintf("later-%d", i)] {
			t.Errorf("later-%d, bound after the failed send, dropped for an older one", i)
		}
	}
}
