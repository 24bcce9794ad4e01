package agent

import (
	"log"
	"net/http"
	"runtime/debug"
	"strings"
)

// Panics on the goroutines the agent starts for a request besides the
// connection's own (a mirror's copy, a retried response read on, the fast
// path's watch of its client, h2up's writer of a request body) and panics
// of a handler of net/http's server or h2srv: each is recovered where it
// happens, logged at error level with its stack and counted in
// fogmesh_agent_panics_total, as recoverConn does for a connection's
// goroutine; the request concerned fails (its stream reset, its
// connection closed, a 502) and what it held is given back. Unrecovered,
// one bad request would end the agent, and every node's traffic with it.

// panicked logs and counts p, a panic recovered while doing what.
func (a *Agent) panicked(what string, p any) {
	a.m.panics.Inc()
	a.log.Error("agent: panic "+what, "panic", p, "stack", string(debug.Stack()))
}

// recoverGo, deferred first by a goroutine the agent starts, recovers a
// panic in it (logged and counted); the goroutine's other deferred calls
// give back what it holds.
func (a *Agent) recoverGo(what string) {
	if p := recover(); p != nil {
		a.panicked(what, p)
	}
}

// recoverHandler, deferred first by the handler of net/http's server and
// h2srv, logs and counts a handler's panic (they would log it at debug
// level only, and not count it) and panics on with http.ErrAbortHandler:
// the server cuts the response (net/http closes the connection, h2srv
// resets the stream) and logs nothing more. http.ErrAbortHandler itself
// (a response cut on purpose) goes on as it is.
func (a *Agent) recoverHandler() {
	if p := recover(); p != nil {
		if p != http.ErrAbortHandler {
			a.panicked("serving a request", p)
		}
		panic(http.ErrAbortHandler)
	}
}

// h2upPanicked is h2up's Config.OnPanic: a request body's read panicked
// on the pool's writer (the stream is reset, the request fails).
func (a *Agent) h2upPanicked(p any) { a.panicked("reading a request body for an HTTP/2 endpoint", p) }

// h2srvPanicked is h2srv's Server.OnPanic: a connection's read loop
// panicked (the connection is closed, its streams fail).
func (a *Agent) h2srvPanicked(p any) { a.panicked("in an HTTP/2 connection's read loop", p) }

// serverErrorLog is the ErrorLog of the agent's net/http servers. net/http
// logs a panic it recovers on a connection's goroutine outside the
// agent's handlers (reading a request, writing a response after the
// handler returned, a handler without recoverHandler: the admin API's) as
// "http: panic serving <addr>: <value>" and its stack ("http2: " for its
// HTTP/2 server's handlers): that line goes out at error level and is
// counted in fogmesh_agent_panics_total, as the agent's own recovered
// panics. Anything else (TLS handshake errors, refused requests, Accept
// errors) stays at debug level.
func (a *Agent) serverErrorLog() *log.Logger { return log.New(serverLogWriter{a}, "", 0) }

type serverLogWriter struct{ a *Agent }

func (w serverLogWriter) Write(p []byte) (int, error) {
	msg := strings.TrimSuffix(string(p), "\n")
	if strings.HasPrefix(msg, "http: panic serving ") || strings.HasPrefix(msg, "http2: panic serving ") {
		w.a.m.panics.Inc()
		line, stack, _ := strings.Cut(msg, "\n")
		_, line, _ = strings.Cut(line, ": ")
		w.a.log.Error("agent: panic in net/http's server", "panic", line, "stack", stack)
		return len(p), nil
	}
	w.a.log.Debug(msg)
	return len(p), nil
}
