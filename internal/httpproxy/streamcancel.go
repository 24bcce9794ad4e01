package httpproxy

import (
	"context"
	"sync"
)

// WithStreamCancel returns ctx marked as cancelled only while a response
// body streams (the fast path's client connection, which its watch
// cancels when the client goes away mid-stream), never while a request is
// sent or its response header awaited. A pool then hooks a request with
// exactly that context (not one derived from it: a timeout's) only for a
// body not yet buffered whole, instead of every request.
func WithStreamCancel(ctx context.Context) context.Context {
	m := &streamCancelMark{}
	m.ctx = context.WithValue(ctx, streamCancelKey{}, m)
	return m.ctx
}

type streamCancelKey struct{}

type streamCancelMark struct {
	ctx context.Context

	mu      sync.Mutex
	waiting *poolConn // the connection a request on ctx waits on for its response head
	gone    bool      // CancelHeadWait was called
}

// CancelHeadWait ends the wait for a response head of the request on
// ctx, one of WithStreamCancel's (its pool connection is closed), and of
// every later one: the fast path calls it once it saw its client go away
// (ctx cancelled first), as net/http's server cancels a request whose
// client closed its connection. The pools do not hook such a context while
// a request is sent and its head awaited (one hook per request cost
// allocations on every request); the fast path watches its client only
// when a head is slow to come.
func CancelHeadWait(ctx context.Context) {
	m, _ := ctx.Value(streamCancelKey{}).(*streamCancelMark)
	if m == nil {
		return
	}
	m.mu.Lock()
	m.gone = true
	pc := m.waiting
	m.mu.Unlock()
	if pc != nil {
		pc.poison()
	}
}

// await records pc as the connection waited on for a head (nil: none
// now); false if CancelHeadWait was called.
func (m *streamCancelMark) await(pc *poolConn) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.waiting = pc
	return !m.gone
}

// cancelsOnlyStreams returns ctx's mark if ctx is one of WithStreamCancel's.
func cancelsOnlyStreams(ctx context.Context) *streamCancelMark {
	m, _ := ctx.Value(streamCancelKey{}).(*streamCancelMark)
	if m != nil && m.ctx == ctx {
		return m
	}
	return nil
}
