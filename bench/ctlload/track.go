package main

import (
	"slices"
	"sort"
	"sync"
	"time"
)

// tracker matches the versions the simulated agents apply against the
// store revisions of the changes the load makes: change k is at an agent
// once it applied an update whose version is at least change k's revision
// (updates are cumulative). Each agent's applied versions are kept with
// their times while recording (steady phase), and matched at the end, so
// changes may be registered in any order (several are in flight at once)
// and an agent may apply a version before the writer learns its revision.
type tracker struct {
	mu        sync.Mutex
	changes   []change
	agents    []agentTrack
	recording bool
	// inScope tells whether agent i subscribes to service svc (the
	// changes of a service need reach only its subscribers).
	inScope func(i, svc int) bool
}

type change struct {
	t0  time.Time // when the writer sent it
	rev uint64
	svc int // the service of the endpoint changed
}

type agentTrack struct {
	hist    []verTime // versions applied while recording, in order
	applied uint64    // highest version applied
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

// newTracker tracks n agents; inScope nil: every agent gets every change.
func newTracker(n int, inScope func(i, svc int) bool) *tracker {
	if inScope == nil {
		inScope = func(int, int) bool { return true }
	}
	return &tracker{agents: make([]agentTrack, n), inScope: inScope}
}

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
	if v > a.applied {
		a.applied = v
		if tr.recording {
			a.hist = append(a.hist, verTime{v, t})
		}
	}
	if a.syncedAt.IsZero() && !a.subscribedAt.IsZero() && v >= a.welcomeRev {
		a.syncedAt = t
	}
}

// record starts keeping applied versions, from each agent's current one.
func (tr *tracker) record(t time.Time) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.recording = true
	for i := range tr.agents {
		a := &tr.agents[i]
		a.hist = append(a.hist[:0], verTime{a.applied, t})
	}
}

// register adds a change of service svc sent at t0 and committed at rev.
func (tr *tracker) register(t0 time.Time, rev uint64, svc int) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.changes = append(tr.changes, change{t0: t0, rev: rev, svc: svc})
}

// maxRev is the highest revision of a registered change.
func (tr *tracker) maxRev() uint64 {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	var m uint64
	for _, c := range tr.changes {
		m = max(m, c.rev)
	}
	return m
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

// latencies returns, for every change applied by all agents that
// subscribe to its service, the time from its sending to its application
// at the last of them, sorted; the fan-out of each, from the first of its
// agents to apply it to the last (the push path alone, without the
// admin API's write), sorted; how many changes some such agent never
// applied; and how many agents a change had to reach, on average.
func (tr *tracker) latencies() (done, fanout []time.Duration, incomplete int, reach float64) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	total := 0
	for _, c := range tr.changes {
		var first, last time.Time
		ok := true
		for i := range tr.agents {
			if !tr.inScope(i, c.svc) {
				continue
			}
			total++
			h := tr.agents[i].hist
			j := sort.Search(len(h), func(j int) bool { return h[j].v >= c.rev })
			if j == len(h) {
				ok = false
				break
			}
			last = maxTime(last, h[j].t)
			if first.IsZero() || h[j].t.Before(first) {
				first = h[j].t
			}
		}
		if !ok {
			incomplete++
			continue
		}
		// An agent may have applied it before t0 was taken (clock
		// granularity): never below zero.
		done = append(done, max(last.Sub(c.t0), 0))
		fanout = append(fanout, last.Sub(first))
	}
	slices.Sort(done)
	slices.Sort(fanout)
	if len(tr.changes) > 0 {
		reach = float64(total) / float64(len(tr.changes))
	}
	return done, fanout, incomplete, reach
}

// quantile of sorted durations (nearest rank).
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}
