package main

import (
	"fmt"
	"io"
	"regexp"
	"sort"
	"time"

	"golang.org/x/exp/trace"
)

// request is one request's time in a connection goroutine.
type request struct {
	start, end trace.Time    // the client read's wake; the next client read's block
	sched      time.Duration // runnable, not running
	wake       time.Duration // of which the request's own wake (the first)
	handoff    bool          // the request's wake ran on another thread than the one that readied it
	run        time.Duration // running
	up         time.Duration // blocked on the upstream read
	spurious   bool          // a client-read wake in the idle gap before found nothing
	gc, stw    bool          // overlapped a GC mark phase, a stop-the-world pause
}

func (r *request) total() time.Duration { return r.end.Sub(r.start) }

// conn is a connection goroutine's state.
type conn struct {
	cur          *request
	blockedOn    int // kind of the last block
	blockedAt    trace.Time
	runnableAt   trace.Time
	runnableM    trace.ThreadID
	runningAt    trace.Time
	runningM     trace.ThreadID
	wokeOnClient bool // woke from a client read, not yet known to be a request
	spurious     bool // a wake in the idle gap found nothing
}

const (
	other = iota
	clientRead
	upRead
)

// result is a trace's requests, slowest last, and what else it held.
type result struct {
	reqs                    []*request
	gcMarks, stws           int
	gcTime, stwTime, stwMax time.Duration
	spuriousWakes           int
	spuriousGaps            []time.Duration // how long each spurious wake's goroutine had been blocked
	blocks                  [3]int
}

// analyze reads a trace and times the requests of the goroutines whose
// blocks match client and up.
func analyze(r io.Reader, client, up *regexp.Regexp) (*result, error) {
	tr, err := trace.NewReader(r)
	if err != nil {
		return nil, fmt.Errorf("reading the trace: %w", err)
	}
	res := &result{}
	conns := map[trace.GoID]*conn{}
	var gcR, stwR [][2]trace.Time
	open := map[string]trace.Time{}
	kindOf := func(st trace.Stack) int {
		for fr := range st.Frames() {
			switch {
			case client.MatchString(fr.Func):
				return clientRead
			case up.MatchString(fr.Func):
				return upRead
			}
		}
		return other
	}
	for {
		ev, err := tr.ReadEvent()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("reading the trace: %w", err)
		}
		t := ev.Time()
		switch ev.Kind() {
		case trace.EventRangeBegin, trace.EventRangeActive:
			open[ev.Range().Name] = t
		case trace.EventRangeEnd:
			name := ev.Range().Name
			b, ok := open[name]
			if !ok {
				continue
			}
			delete(open, name)
			switch {
			case name == "GC concurrent mark phase":
				gcR = append(gcR, [2]trace.Time{b, t})
				res.gcTime += t.Sub(b)
			case len(name) > 14 && name[:14] == "stop-the-world":
				stwR = append(stwR, [2]trace.Time{b, t})
				res.stwTime += t.Sub(b)
				res.stwMax = max(res.stwMax, t.Sub(b))
			}
		case trace.EventStateTransition:
			st := ev.StateTransition()
			if st.Resource.Kind != trace.ResourceGoroutine {
				continue
			}
			id := st.Resource.Goroutine()
			c := conns[id]
			if c == nil {
				c = &conn{}
				conns[id] = c
			}
			from, to := st.Goroutine()
			switch {
			case to == trace.GoWaiting:
				k := kindOf(ev.Stack())
				res.blocks[k]++
				if c.cur != nil {
					c.cur.run += t.Sub(c.runningAt)
				}
				switch k {
				case clientRead:
					if c.cur != nil {
						c.cur.end = t
						res.reqs = append(res.reqs, c.cur)
						c.cur = nil
						c.spurious = false
					} else if c.wokeOnClient {
						c.spurious = true // woke, read nothing, blocked again
						res.spuriousWakes++
						res.spuriousGaps = append(res.spuriousGaps, c.runnableAt.Sub(c.blockedAt))
					}
					c.wokeOnClient = false
				case upRead:
					if c.cur == nil && c.wokeOnClient {
						wake := c.runningAt.Sub(c.runnableAt)
						c.cur = &request{start: c.runnableAt, sched: wake, wake: wake,
							handoff: c.runnableM != c.runningM, run: t.Sub(c.runningAt), spurious: c.spurious}
						c.wokeOnClient = false
					}
				}
				c.blockedOn, c.blockedAt = k, t
			case from == trace.GoWaiting && to == trace.GoRunnable:
				c.runnableAt, c.runnableM = t, ev.Thread()
				if c.blockedOn == clientRead && c.cur == nil {
					c.wokeOnClient = true
				}
				if c.blockedOn == upRead && c.cur != nil {
					c.cur.up += t.Sub(c.blockedAt)
				}
			case from == trace.GoRunning && to == trace.GoRunnable: // preempted, yielded
				if c.cur != nil {
					c.cur.run += t.Sub(c.runningAt)
				}
				c.runnableAt, c.runnableM = t, ev.Thread()
			case to == trace.GoRunning:
				c.runningAt, c.runningM = t, ev.Thread()
				if c.cur != nil && from == trace.GoRunnable {
					c.cur.sched += t.Sub(c.runnableAt)
				}
			}
		}
	}
	in := func(rs [][2]trace.Time, a, b trace.Time) bool {
		for _, r := range rs {
			if r[0] < b && r[1] > a {
				return true
			}
		}
		return false
	}
	for _, q := range res.reqs {
		q.gc, q.stw = in(gcR, q.start, q.end), in(stwR, q.start, q.end)
	}
	res.gcMarks, res.stws = len(gcR), len(stwR)
	sort.SliceStable(res.reqs, func(i, j int) bool { return res.reqs[i].total() < res.reqs[j].total() })
	sort.Slice(res.spuriousGaps, func(i, j int) bool { return res.spuriousGaps[i] < res.spuriousGaps[j] })
	return res, nil
}

// print writes the percentiles of the time in the proxy and the mean
// parts per slice of requests.
func (res *result) print(w io.Writer, list bool) {
	n := len(res.reqs)
	fmt.Fprintf(w, "blocks: %d client reads, %d upstream reads, %d other\n", res.blocks[clientRead], res.blocks[upRead], res.blocks[other])
	fmt.Fprintf(w, "requests %d; GC mark phases %d (%v), stop-the-world pauses %d (%v, longest %v)\n",
		n, res.gcMarks, res.gcTime, res.stws, res.stwTime, res.stwMax)
	if n == 0 {
		return
	}
	us := func(d time.Duration) float64 { return float64(d) / 1e3 }
	fmt.Fprint(w, "time in the proxy:")
	for _, p := range []float64{50, 90, 99, 99.9} {
		fmt.Fprintf(w, " p%v %.0f µs", p, us(res.reqs[int(p/100*float64(n-1))].total()))
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| requests | n | total µs | runnable, not running µs | of which the request's wake | wake run on another thread | running µs | upstream µs | in a GC mark | in a STW pause | spurious wake before |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|")
	for _, s := range []struct {
		name string
		rs   []*request
	}{{"all", res.reqs}, {"fastest 50 %", res.reqs[:n/2]}, {"slowest 1 %", res.reqs[n*99/100:]}, {"slowest 0.1 %", res.reqs[n*999/1000:]}} {
		var tot, sched, wake, run, up time.Duration
		var ho, gc, stw, sp int
		for _, q := range s.rs {
			tot += q.total()
			sched += q.sched
			wake += q.wake
			run += q.run
			up += q.up
			ho += b2i(q.handoff)
			gc += b2i(q.gc)
			stw += b2i(q.stw)
			sp += b2i(q.spurious)
		}
		k := time.Duration(max(len(s.rs), 1))
		pc := func(x int) float64 { return 100 * float64(x) / float64(max(len(s.rs), 1)) }
		fmt.Fprintf(w, "| %s | %d | %.0f | %.0f | %.0f | %.1f %% | %.0f | %.0f | %.1f %% | %.1f %% | %.1f %% |\n",
			s.name, len(s.rs), us(tot/k), us(sched/k), us(wake/k), pc(ho), us(run/k), us(up/k), pc(gc), pc(stw), pc(sp))
	}
	fmt.Fprintf(w, "spurious client-read wakes: %d, %.3f per request", res.spuriousWakes, float64(res.spuriousWakes)/float64(n))
	if g := res.spuriousGaps; len(g) > 0 {
		fmt.Fprintf(w, "; blocked before them: p10 %v, p50 %v, p90 %v", g[len(g)/10].Round(time.Microsecond), g[len(g)/2].Round(time.Microsecond), g[len(g)*9/10].Round(time.Microsecond))
	}
	fmt.Fprintln(w)
	if list {
		for _, q := range res.reqs[n*999/1000:] {
			fmt.Fprintf(w, "  %.0f µs: runnable %.0f, running %.0f, upstream %.0f, GC %v\n", us(q.total()), us(q.sched), us(q.run), us(q.up), q.gc)
		}
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
