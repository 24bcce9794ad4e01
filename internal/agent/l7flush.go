package agent

import (
	"context"
	"io"
	"net/http"
)

// Coalesced flushes for HTTP/2 clients. ReverseProxy flushes after every
// write of a response without Content-Length (gRPC, streaming), and every
// flush of net/http's HTTP/2 server is a write system call of its own on a
// goroutine of its own: a unary gRPC response went out in three (headers
// and message, then trailers). A flush is needed only when the proxy is
// about to wait for the endpoint; while the upstream body (an h2up
// stream) already holds more bytes or its end, the flush is left to the
// next write or to the end of the response, which the server sends in one.

// readyBody is an upstream response body that can tell whether a read
// would return at once (h2up's).
type readyBody interface{ Ready() bool }

// flushHint is per request: the body the response is copied from, once
// known (set and read on the handler's goroutine).
type flushHint struct{ body readyBody }

type flushHintKey struct{}

func withFlushHint(ctx context.Context, h *flushHint) context.Context {
	return context.WithValue(ctx, flushHintKey{}, h)
}

// setFlushHint records the response body the request's answer is copied
// from, if the request carries a hint and the body can tell.
func setFlushHint(req *http.Request, body io.ReadCloser) {
	h, _ := req.Context().Value(flushHintKey{}).(*flushHint)
	if h == nil {
		return
	}
	h.body = nil
	if rb, ok := body.(readyBody); ok {
		h.body = rb
	}
}

// coalescingWriter skips a flush while the upstream body has more ready.
type coalescingWriter struct {
	http.ResponseWriter
	hint *flushHint
}

func (w *coalescingWriter) FlushError() error {
	if b := w.hint.body; b != nil && b.Ready() {
		return nil
	}
	return http.NewResponseController(w.ResponseWriter).Flush()
}

func (w *coalescingWriter) Flush() { w.FlushError() }

// Unwrap lets http.ResponseController reach the server's writer.
func (w *coalescingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
