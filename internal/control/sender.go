package control

import (
	"context"
	"sync"
	"time"

	"github.com/fogmesh/fogmesh/internal/syncproto"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// The sender of an agent stream: updates (snapshot, then deltas from the
// shared feed), answers to later subscribes, the trust message and the
// scoped streams' empty updates.
//
// It has no goroutine of its own. A goroutine that waited for the feed's
// commits cost every stream a stack (about 6 KiB, 60 MB at 10,000 agents,
// and the GC's pacer counts stacks into the heap goal, so twice that in
// RSS) although a stream is idle almost all the time: a change to one
// service concerns the few agents that use it. Instead, whatever gives the
// sender work kicks it (the feed's commits in its scope, the reader's
// subscribe and later subscribes, a trust change, the empty-update timer),
// and a kick starts a goroutine that sends until nothing is left, then
// ends. One runs per stream at most, so the stream's writes stay in order.
type sender struct {
	mu      sync.Mutex
	running bool // a goroutine sends
	again   bool // kicked while it sent: look once more
	stopped bool // the stream ended: no more sending
	wg      sync.WaitGroup

	// From the reader (under mu).
	subscription *syncproto.Subscribed
	// pending holds the scope entries of later subscribes
	// (FeatureScopeAdd), oldest first. A slice rather than a buffered
	// channel: a channel of maxPendingAdds slots cost 1.5 KiB on every
	// stream, and most streams never widen.
	pending [][]string
	waiting bool // a goroutine waits for the feed to reach the welcome

	// The sending goroutine's own (one at a time).
	ctx       context.Context
	ss        *sendState      // nil until subscribed
	ready     bool            // the feed holds what the welcome named
	trustSent bool            // the trust message was sent once
	trustCh   <-chan struct{} // closed when the trust message changes
	timer     *time.Timer     // scoped: the next empty update
}

// startSender arms the sender of a running stream; its first kick sends
// the trust message (if the agent takes it).
func (st *stream) startSender(ctx context.Context) {
	st.snd.ctx = ctx
	if st.trust {
		st.s.trustStreams.add(st)
	}
	st.kick()
}

// stopSender stops the sender of an ending stream (its connection is
// closed, so a write in progress fails at once) and waits for it.
func (st *stream) stopSender() {
	st.snd.mu.Lock()
	st.snd.stopped = true
	st.snd.mu.Unlock()
	st.snd.wg.Wait()
	if st.trust {
		st.s.trustStreams.remove(st)
	}
	if st.snd.timer != nil {
		st.snd.timer.Stop()
	}
	if ss := st.snd.ss; ss != nil {
		ss.fd.unsubscribe(ss.sub)
	}
}

// kick tells the sender it may have something to send. It never blocks:
// the feed calls it with its lock held.
func (st *stream) kick() {
	snd := &st.snd
	snd.mu.Lock()
	defer snd.mu.Unlock()
	switch {
	case snd.stopped:
	case snd.running:
		snd.again = true
	default:
		snd.running = true
		snd.wg.Add(1)
		go st.drain()
	}
}

// drain sends until a pass finds nothing more to do.
func (st *stream) drain() {
	snd := &st.snd
	defer snd.wg.Done()
	for {
		err := st.sendPass()
		snd.mu.Lock()
		if err != nil || snd.stopped || !snd.again {
			snd.running, snd.again = false, false
			if err != nil {
				snd.stopped = true
			}
			snd.mu.Unlock()
			if err != nil && snd.ctx.Err() == nil {
				// A stream that can no longer send updates must not look alive.
				st.s.log.Error("control: cannot send updates, closing stream", "node", st.node, "err", err)
				st.c.Close()
			}
			return
		}
		snd.again = false
		snd.mu.Unlock()
	}
}

// sendPass sends what is due: the trust message if it is new, then, once
// subscribed, the answers to later subscribes and what the subscriber
// lacks; and arms the timer of the next empty update.
func (st *stream) sendPass() error {
	snd := &st.snd
	if snd.ctx.Err() != nil {
		return nil
	}
	if err := st.sendTrust(); err != nil {
		return err
	}
	if snd.ss == nil {
		snd.mu.Lock()
		sub := snd.subscription
		snd.mu.Unlock()
		if sub == nil {
			return nil
		}
		snd.ss = st.startSending(sub)
	}
	ss := snd.ss
	if !snd.ready {
		// The first update holds at least what the welcome said is
		// committed (the feed follows the store a moment behind).
		cur, wake := ss.fd.watch()
		if cur < st.welcome {
			snd.mu.Lock()
			wait := !snd.waiting
			snd.waiting = true
			snd.mu.Unlock()
			if wait { // a short wait, at the stream's start only
				go func() {
					select {
					case <-wake:
					case <-snd.ctx.Done():
					}
					snd.mu.Lock()
					snd.waiting = false
					snd.mu.Unlock()
					st.kick()
				}()
			}
			return nil
		}
		snd.ready = true
	}
	for {
		// A busy feed must not hold back a later subscribe's answer (a
		// DNS query waits for it) nor a trust change.
		if err := st.answerAdds(ss); err != nil {
			return err
		}
		if err := st.sendTrust(); err != nil {
			return err
		}
		again, err := st.sendOnce(ss)
		if err != nil {
			return err
		}
		if !again || snd.ctx.Err() != nil {
			break
		}
	}
	if ss.f.Scoped() {
		// A scoped stream is woken only for its scope; the timer tells
		// it, at most every emptyEvery, the version it was not told.
		next := time.Until(ss.lastSent.Add(emptyEvery))
		if next <= 0 { // nothing held back: look again in a while
			next = emptyEvery
		}
		if snd.timer == nil {
			snd.timer = time.AfterFunc(next, st.kick)
		} else {
			snd.timer.Reset(next)
		}
	}
	return nil
}

// sendTrust sends the trust message if the agent takes it and it was not
// sent or changed since.
func (st *stream) sendTrust() error {
	snd := &st.snd
	if !st.trust {
		return nil
	}
	if snd.trustSent {
		select {
		case <-snd.trustCh:
		default:
			return nil
		}
	}
	t, watch := st.s.sec.currentTrust()
	snd.trustSent, snd.trustCh = true, watch
	return st.write(&wire.Message{Type: wire.TypeTrust, Trust: t})
}

// trustStreams are the streams that take trust messages, kicked when it
// changes (one goroutine watches for all of them).
type trustStreams struct {
	mu sync.Mutex
	m  map[*stream]struct{}
}

func (ts *trustStreams) add(st *stream) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.m == nil {
		ts.m = map[*stream]struct{}{}
	}
	ts.m[st] = struct{}{}
}

func (ts *trustStreams) remove(st *stream) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	delete(ts.m, st)
}

// watchTrust kicks every stream that takes trust messages after each
// change of the trust message, until ctx ends.
func (s *Server) watchTrust(ctx context.Context) {
	_, watch := s.sec.currentTrust()
	for {
		select {
		case <-ctx.Done():
			return
		case <-watch:
		}
		// Watch the next change before the kicks: a change while they run
		// is then kicked again.
		_, watch = s.sec.currentTrust()
		s.trustStreams.mu.Lock()
		sts := make([]*stream, 0, len(s.trustStreams.m))
		for st := range s.trustStreams.m {
			sts = append(sts, st)
		}
		s.trustStreams.mu.Unlock()
		for _, st := range sts {
			st.kick()
		}
	}
}
