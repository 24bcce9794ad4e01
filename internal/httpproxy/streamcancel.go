package httpproxy

import "context"

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

type streamCancelMark struct{ ctx context.Context }

// cancelsOnlyStreams reports whether ctx is one of WithStreamCancel's.
func cancelsOnlyStreams(ctx context.Context) bool {
	m, _ := ctx.Value(streamCancelKey{}).(*streamCancelMark)
	return m != nil && m.ctx == ctx
}
