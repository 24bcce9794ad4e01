package h2srv

import (
	"context"
	"net/http"
)

// Telling a request's watcher that its context ended without
// context.AfterFunc (issue 14): a proxy's upstream stream must be reset
// when its client's stream is (or its connection closes), and
// context.AfterFunc costs four allocations per request (and the context's
// Done channel one more), about a quarter of the agent's per h2c request
// in session 36 (BENCHMARKS.md).

// Ender is told that a request's context ended (WatchEnd).
type Ender interface{ ContextEnded() }

// StreamRef is a stream's handle (RefOf; the zero value: none), valid
// for good: the stream is not reused.
type StreamRef struct{ st *stream }

// RefOf is the stream of w if w is this server's ResponseWriter itself
// (not a wrapper), called on its handler's goroutine before the handler
// returns; else the zero StreamRef.
func RefOf(w http.ResponseWriter) StreamRef {
	if rw, ok := w.(*responseWriter); ok {
		return StreamRef{rw.st}
	}
	return StreamRef{}
}

// Valid reports whether r is a stream's.
func (r StreamRef) Valid() bool { return r.st != nil }

// WatchEnd has e.ContextEnded called, once, on a goroutine of its own,
// when ctx ends, as context.AfterFunc(ctx, e.ContextEnded) would; ctx
// must be the context of the request of r's stream, which ends only when
// the stream is reset, its connection closes or its response is done.
// false, nothing done: r is none, ctx is not its stream's, ctx has ended,
// or another Ender watches the stream.
func (r StreamRef) WatchEnd(ctx context.Context, e Ender) bool {
	st := r.st
	if st == nil || e == nil || st.ctx != ctx {
		return false
	}
	sc := st.sc
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if st.ender != nil || ctx.Err() != nil {
		return false
	}
	st.ender = e
	return true
}

// StopWatch undoes WatchEnd of e, unless e was told already (or is being
// told).
func (r StreamRef) StopWatch(e Ender) {
	st := r.st
	if st == nil {
		return
	}
	st.sc.mu.Lock()
	if st.ender == e {
		st.ender = nil
	}
	st.sc.mu.Unlock()
}
