package agent

import (
	"fmt"
	"io"
	"net/http"
)

// A request whose handling panics (a bug: recoverConn, net/http's server
// and h2srv keep the agent up and cut the request) is still logged and
// traced, and gives back what it holds.
//
// Its access-log line and span say status 500 (Internal Server Error)
// with the error "panic: <value>", the span's status an error: the agent
// failed it, whatever the endpoint answered. The client saw no complete
// response (the fast path and net/http close the connection, h2srv resets
// the stream): 500 is what net/http's server and h2srv would answer a
// handler's panic with if they could. On the fast path a response whose
// head had gone out says the status the client saw, with the panic as its
// error (the client saw that status, then the connection's close). A
// request whose record had already
// ended (its response body was done before the panic) keeps that record:
// one line and one span per request.
//
// A request body's read on the pool's goroutine that sends its rest
// beside the answer (the fast path's full duplex, httpproxy's sendRest)
// counts as the attempt's while the round trip still awaits the answer's
// head: the pool raises its panic again on the round trip, recorded as
// above. After the head the pool's OnPanic logs and counts it (h1pool.go)
// and the answer's read fails with the panic's value
// (httpproxy.BodyPanicError): the request is recorded as a panic after
// the head, the status the client saw with the panic as its error
// (obsBody), unless its record had ended already.
//
// What it holds (its client's place, its agent and circuit breaker slots,
// its timeout, the upstream response) is released with its response's
// body: the code that panicked may never have closed it. Each guard
// recovers the panic, does its part and panics on with the same value, so
// the panic still reaches whoever logs and counts it, with its stack.

// panicError is a panic's value as a request's error.
type panicError struct{ v any }

func (e panicError) Error() string { return fmt.Sprintf("panic: %v", e.v) }

// isPanicError: err is a panic's (a response cut by it is an error
// whatever its status).
func isPanicError(err error) bool {
	_, ok := err.(panicError)
	return ok
}

// endPanicked ends rec as a request whose handling panicked with p.
func (rec *reqObs) endPanicked(p any) {
	rec.end(http.StatusInternalServerError, "", panicError{p})
}

// endIfPanicked, deferred, ends rec as panicked if its request's round
// trip panics, and panics on.
func (rec *reqObs) endIfPanicked() {
	if p := recover(); p != nil {
		rec.endPanicked(p)
		panic(p)
	}
}

// abandonResponse is what a panic (p) after the round trip does with the
// response body lbTransport returned (through its wrappers): the
// request's record ends as panicked, then the body is given up, which
// releases what the request holds. A body done already (read to its end
// or closed) is left as it was (doneBody.abandon). headSent: the
// response's head had gone out to the client (the fast path's); its
// record says the status the client saw, with the panic as the error.
func abandonResponse(body io.ReadCloser, p any, headSent bool) {
	if ob, ok := body.(*obsBody); ok {
		switch {
		case p == http.ErrAbortHandler:
			// Not a bug: the handler cut a response it had begun (its
			// upstream failed mid-body): the status the client saw.
			ob.rec.end(ob.resp.StatusCode, grpcStatusOf(ob.resp, ob.grpc), http.ErrAbortHandler)
		case headSent:
			ob.rec.end(ob.resp.StatusCode, grpcStatusOf(ob.resp, ob.grpc), panicError{p})
		default:
			ob.rec.endPanicked(p)
		}
		body = ob.ReadCloser
	}
	switch b := body.(type) {
	case *doneBody:
		b.abandon()
	case *doneConn:
		b.Close() // an upgraded connection's: closed twice at worst
	}
}

// endCall, deferred by newL7's handler, gives up the response body
// the round trip left in up if the handler panics, and panics on: the
// handler's first deferred call (recoverHandler, gopanic.go) logs the
// panic with its stack, counts it and hands net/http's server or h2srv
// http.ErrAbortHandler.
func endCall(up *upstreamBody) {
	if p := recover(); p != nil {
		if b := up.body.Load(); b != nil {
			abandonResponse(*b, p, false)
		}
		panic(p)
	}
}
