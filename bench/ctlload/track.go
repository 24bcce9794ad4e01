package main

import (
	"slices"
	"sync"
	"time"
)

// tracker matches the versions the simulated agents apply against the
// store revisions of the changes the load makes: change k is at every agent
// once each agent applied an update whose version is at least change k's
// revision (updates are cumulative). An agent may apply that version before
// the admin API's answer tells the writer the revision, so versions applied
// above the last known change wait in pend until the change is registered.
type tracker struct {
	mu      sync.Mutex
	changes []change
	agents  []agentTrack
}

type change struct {
	t0        time.Time // when the writer sent it
	rev       uint64
	remaining int       // agents that have not applied it yet
	last      time.Time // when the last agent applied it
}

type agentTrack struct {
	next    int // first change this agent has not applied
	pend    []verTime
	applied uint64 // highest version applied
	// stream bookkeeping, for the resync after a restart
	subscribedAt time.Time // when the current stream's subscribe went out
	welcomeRev   uint64    // the current stream's welcome version
	syncedAt     time.Time // when the current stream applied welcomeRev (zero: not yet)
	streams      int
}

type verTime struct {
	v uint64
	t time.Time
}

func newTracker(n int) *tracker { return &tracker{agents: make([]agentTrack, n)} }

// subscribed records a new stream of agent i: welcomed at store revision
// rev, holding known.
func (tr *tracker) subscribed(i int, rev, known uint64, t time.Time) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	a := &tr.agents[i]
	a.subscribedAt, a.welcomeRev, a.syncedAt = t, rev, time.Time{}
	a.streams++
	if known >= rev {
		a.syncedAt = t // nothing to send: in sync at once
	}
}

// applied records that agent i applied an update of version v at t.
func (tr *tracker) applied(i int, v uint64, t time.Time) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	a := &tr.agents[i]
	a.applied = max(a.applied, v)
	if a.syncedAt.IsZero() && !a.subscribedAt.IsZero() && v >= a.welcomeRev {
		a.syncedAt = t
	}
	for a.next < len(tr.changes) && tr.changes[a.next].rev <= v {
		tr.credit(a.next, t)
		a.next++
	}
	if len(tr.changes) == 0 || v > tr.changes[len(tr.changes)-1].rev {
		a.pend = append(a.pend, verTime{v, t})
	}
}

func (tr *tracker) credit(k int, t time.Time) {
	c := &tr.changes[k]
	c.remaining--
	if t.After(c.last) {
		c.last = t
	}
}

// register adds a change sent at t0 and committed at rev. Revisions must
// be registered in increasing order (one writer).
func (tr *tracker) register(t0 time.Time, rev uint64) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	k := len(tr.changes)
	tr.changes = append(tr.changes, change{t0: t0, rev: rev, remaining: len(tr.agents)})
	for i := range tr.agents {
		a := &tr.agents[i]
		if a.next != k || len(a.pend) == 0 {
			continue
		}
		// Versions applied below rev do not cover this change nor any later one.
		j := 0
		for j < len(a.pend) && a.pend[j].v < rev {
			j++
		}
		a.pend = a.pend[j:]
		if len(a.pend) > 0 {
			tr.credit(k, a.pend[0].t)
			a.next++
		}
	}
}

// minApplied is the lowest version every agent has applied.
func (tr *tracker) minApplied() uint64 {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	m := ^uint64(0)
	for i := range tr.agents {
		m = min(m, tr.agents[i].applied)
	}
	return m
}

// pending counts the changes not yet applied by every agent.
func (tr *tracker) pending() int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	n := 0
	for _, c := range tr.changes {
		if c.remaining > 0 {
			n++
		}
	}
	return n
}

// resync reports, for streams subscribed after since, how many agents have
// one, how many of those are in sync, and when the last one subscribed and
// synced.
func (tr *tracker) resync(since time.Time) (subscribed, synced int, lastSub, lastSync time.Time) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for i := range tr.agents {
		a := &tr.agents[i]
		if !a.subscribedAt.After(since) {
			continue
		}
		subscribed++
		lastSub = maxTime(lastSub, a.subscribedAt)
		if !a.syncedAt.IsZero() {
			synced++
			lastSync = maxTime(lastSync, a.syncedAt)
		}
	}
	return
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// latencies returns, for every change applied by all agents, the time from
// its sending to its application at the last agent, sorted; and how many
// changes some agent never applied.
func (tr *tracker) latencies() (done []time.Duration, incomplete int) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for _, c := range tr.changes {
		if c.remaining > 0 {
			incomplete++
			continue
		}
		done = append(done, c.last.Sub(c.t0))
	}
	slices.Sort(done)
	return done, incomplete
}

// quantile of sorted durations (nearest rank).
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}
