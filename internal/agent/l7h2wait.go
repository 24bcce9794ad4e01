package agent

import (
	"context"

	"github.com/fogmesh/fogmesh/internal/h2srv"
)

// Waits of an HTTP/2 request's handler before it detaches (issue 14).
// With asyncH2 the handlers of the streams a client's read brings run in
// turn on its connection's read loop (h2srv's InlineAll): a handler that
// waits there holds the read loop and the streams queued behind it. Each
// wait of the handler's path calls h2WillWait (or h2srv.WillWait) right
// before it, which hands the read loop on (the queued streams to workers)
// when the handler runs there: the circuit breaker's queue (acquire), a
// fault's delay (injectFault), a configured decision logger (decide), a
// wait for an upstream connection (h2up's Config.Waiting), a synchronous
// attempt (startAsync: an HTTP/1.1 pool, egress rules, a retry after a
// failed start) and every request the asynchronous path does not take
// (forwardH2, newL7's ReverseProxy). A request body's read and a
// response's wait for window hand it on in h2srv itself. Elsewhere (no
// HTTP/2 request, a worker's handler, asyncH2 off) it costs a context
// lookup and a field check.

// h2WillWait: the handler of the HTTP/2 request of ctx (newL7's, wrapH2)
// is about to wait (h2srv.WillWait); nothing for any other context.
func h2WillWait(ctx context.Context) {
	if c, ok := ctx.Value(h2CallKey{}).(*h2Call); ok {
		h2srv.WillWait(c.lw.ResponseWriter)
	}
}
