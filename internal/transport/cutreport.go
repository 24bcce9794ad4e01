package transport

import (
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// Reports of the cuts over the buffer budget (peerbuffer.go). Unlike a
// revoked peer, which the handshake then refuses, a peer cut over its
// budget may connect and be cut again at once, tens of times a second: so
// each peer's cuts are reported (logged as a warning, audited through
// OnCut) at most once every peerBufferWarnEvery, the others counted and
// logged at debug. The window is per peer, so that a noisy peer hides no
// other's cut; the cuts not reported at the time are said by the peer's
// next report, or, if none comes, by a report of the last of them at the
// window's end. Peers are tracked up to cutReportPeers at once (a hostile
// set of identities or addresses must not grow the map without bound);
// the peers past them share one window.

// cutReportPeers is how many peers a server tracks at once for its cut
// reports; an entry is evicted, when the map is full, once its window is
// over and nothing of it waits to be said.
const cutReportPeers = 256

// cutReports limits one server's reports of cuts over the buffer budget.
// A cut is reported now (cut's verdict) or later (late, run by a timer).
// close stops the timers and waits for a late report being said.
type cutReports struct {
	say func(*slog.Logger, Cut) // logs (with the logger given) and audits a cut already counted
	wg  sync.WaitGroup          // late reports being said

	mu     sync.Mutex    // guards the following
	every  time.Duration // peerBufferWarnEvery; tests shorten it
	closed bool
	peers  map[string]*cutReport
	others cutReport // the peers past cutReportPeers, together
}

// cutReport is one peer's (or the others') reports.
type cutReport struct {
	last   time.Time    // the last report
	unsaid int          // cuts since, not reported
	latest Cut          // the last of them
	log    *slog.Logger // latest's, with the peer's address
	timer  *time.Timer  // says them at the window's end; nil: none pending
	gen    uint64       // the timer's: a stopped one that fires does nothing
}

func newCutReports(say func(*slog.Logger, Cut)) *cutReports {
	return &cutReports{say: say, every: peerBufferWarnEvery, peers: make(map[string]*cutReport)}
}

// cut decides on the cut c of peer key (logged to log) at now: the cut
// to report now, its error saying how many of the peer's cuts were not
// reported since its last report, or false (kept here, said later).
func (r *cutReports) cut(key string, c Cut, log *slog.Logger, now time.Time) (Cut, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, scope := r.entryLocked(key, now)
	if !e.last.IsZero() && now.Sub(e.last) < r.every {
		e.unsaid++
		e.latest, e.log = c, log
		if e.timer == nil && !r.closed {
			e.gen++
			gen := e.gen
			e.timer = time.AfterFunc(e.last.Add(r.every).Sub(now), func() { r.late(e, gen, scope) })
		}
		return Cut{}, false
	}
	if e.timer != nil { // said now: a timer that fires anyway finds its gen gone
		e.timer.Stop()
		e.timer = nil
		e.gen++
	}
	if e.unsaid > 0 {
		c.Err = fmt.Errorf("%w (and %d more cuts %s not reported since the last reported)", c.Err, e.unsaid, scope)
	}
	e.last, e.unsaid, e.latest, e.log = now, 0, Cut{}, nil
	return c, true
}

// entryLocked returns the reports of peer key, making room for it if it
// is new and the map is full (the others' when there is none), and how
// the reports name whose cuts they count.
func (r *cutReports) entryLocked(key string, now time.Time) (*cutReport, string) {
	const peer = "of this peer"
	if e := r.peers[key]; e != nil {
		return e, peer
	}
	if len(r.peers) >= cutReportPeers {
		for k, e := range r.peers {
			if e.timer == nil && now.Sub(e.last) >= r.every {
				delete(r.peers, k)
			}
		}
	}
	if len(r.peers) >= cutReportPeers {
		return &r.others, fmt.Sprintf("of peers past the %d reported one by one", cutReportPeers)
	}
	e := &cutReport{}
	r.peers[key] = e
	return e, peer
}

// late says e's cuts not reported, at the end of its window: a report of
// the last of them.
func (r *cutReports) late(e *cutReport, gen uint64, scope string) {
	r.mu.Lock()
	if r.closed || e.gen != gen || e.timer == nil || e.unsaid == 0 {
		r.mu.Unlock()
		return
	}
	c, n, log := e.latest, e.unsaid, e.log
	e.last, e.unsaid, e.latest, e.log, e.timer = time.Now(), 0, Cut{}, nil, nil
	r.wg.Add(1) // under mu, not closed: close waits for it
	r.mu.Unlock()
	defer r.wg.Done()
	c.Err = fmt.Errorf("%w (reported late: the last of %d cuts %s not reported at the time)", c.Err, n, scope)
	r.say(log, c)
}

// close stops the pending reports (their cuts stay counted in the
// metrics) and waits for one being said. Idempotent.
func (r *cutReports) close() {
	r.mu.Lock()
	r.closed = true
	for _, e := range r.peers {
		if e.timer != nil {
			e.timer.Stop()
		}
	}
	if r.others.timer != nil {
		r.others.timer.Stop()
	}
	r.mu.Unlock()
	r.wg.Wait()
}
