package agent

import (
	"io"
	"net/http"
	"sync/atomic"
)

// Fewer writes for HTTP/2 responses: ReverseProxy flushes after every
// write of a response of unknown length (gRPC's), so a unary call's
// message left in one write and its trailers in another. When the
// upstream response has already ended (its last DATA and trailers are
// buffered), the flush is skipped: the message goes out with the trailers
// when the handler returns (h2srv), in one write.

// upstreamBody holds the response body lbTransport.RoundTrip returned for
// the request whose context carries it.
type upstreamBody struct{ body atomic.Pointer[io.ReadCloser] }

type upstreamBodyKey struct{}

// upstreamEnded reports whether r (a response body, through the agent's
// wrappers) has ended upstream: reads return the rest without waiting.
func upstreamEnded(r io.Reader) bool {
	u, ok := r.(interface{ UpstreamEnded() bool })
	return ok && u.UpstreamEnded()
}

// lazyFlushWriter skips flushes while the upstream response has ended.
type lazyFlushWriter struct {
	http.ResponseWriter
	up *upstreamBody
}

func (w *lazyFlushWriter) FlushError() error {
	if b := w.up.body.Load(); b != nil && upstreamEnded(*b) {
		return nil
	}
	return http.NewResponseController(w.ResponseWriter).Flush()
}

func (w *lazyFlushWriter) Flush() { w.FlushError() }

// Unwrap lets http.ResponseController reach the server's writer (deadlines).
func (w *lazyFlushWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
