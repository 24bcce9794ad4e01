package httpproxy

import (
	"context"
	"sync/atomic"
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

	// waiting is the connection a request on ctx waits on for its
	// response head (nil: none), or markGone once CancelHeadWait was
	// called: one word, so that await and CancelHeadWait fall in one order
	// without a lock (a CancelHeadWait before an await refuses the
	// request and poisons nothing; after it, it poisons the connection
	// awaited), as with the mutex they had before.
	waiting atomic.Pointer[poolConn]

	// body waits for the request bodies of ctx's requests (SetBodyWaiter;
	// nil: none).
	body BodyWaiter

	// hb is ctx's HeaderBuf (SetResponseHeaderBuf; nil: none).
	hb *HeaderBuf
}

// markGone is streamCancelMark.waiting after CancelHeadWait.
var markGone = new(poolConn)

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
	if pc := m.waiting.Swap(markGone); pc != nil && pc != markGone {
		pc.poison()
	}
}

// await records pc as the connection waited on for a head (nil: none
// now); false if CancelHeadWait was called.
func (m *streamCancelMark) await(pc *poolConn) bool {
	for {
		old := m.waiting.Load()
		if old == markGone {
			return false
		}
		if m.waiting.CompareAndSwap(old, pc) {
			return true
		}
	}
}

// cancelsOnlyStreams returns ctx's mark if ctx is one of WithStreamCancel's.
func cancelsOnlyStreams(ctx context.Context) *streamCancelMark {
	m, _ := ctx.Value(streamCancelKey{}).(*streamCancelMark)
	if m != nil && SameContext(m.ctx, ctx) {
		return m
	}
	return nil
}
