package agent

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/VictoriaMetrics/metrics"

	"github.com/fogmesh/fogmesh/internal/accesslog"
)

// panicCloseBody is a response body whose Close panics (a bug).
type panicCloseBody struct{}

func (panicCloseBody) Read([]byte) (int, error) { return 0, io.EOF }
func (panicCloseBody) Close() error             { panic("test: a bug in a body's Close") }

// TestEndConnReleasesWhenClosePanics: a fast-path connection that ends
// in a panic (here: while its response is written) gives up its last
// request's response body (endConn); a panic in that body's own Close
// must not skip the release of what the request holds: its client's place
// and its agent slot would stay taken for good. The panic goes on to
// recoverConn.
func TestEndConnReleasesWhenClosePanics(t *testing.T) {
	var l clientLimiter
	place := l.holdConn("127.75.0.9:1000", 2)
	var h reqHold
	if !l.acquireAt(place, 2, &h) {
		t.Fatal("no place")
	}
	var inflight atomic.Int64
	inflight.Add(1)
	h.inflight = &inflight
	cs := &h1ClientConn{place: place}
	resp := &http.Response{StatusCode: http.StatusOK, Body: panicCloseBody{}}
	h.onDoneIn(resp, &cs.done)
	got := func() (p any) {
		defer func() { p = recover() }()
		defer cs.endConn()
		panic("test: a bug while writing a response")
	}()
	if got == nil {
		t.Fatal("the panic stopped at endConn")
	}
	if n := inflight.Load(); n != 0 {
		t.Errorf("%d requests in flight after the connection's end, want 0", n)
	}
	if n := place.inflight.Load(); n != 0 {
		t.Errorf("the client's place counts %d requests, want 0", n)
	}
	l.dropConn(place)
	if len(l.n) != 0 {
		t.Errorf("the limiter keeps %d clients, want none", len(l.n))
	}
}

// TestAbandonResponseRecord: a response body given up after a panic ends
// its request's record as a 500 with the panic; after http.ErrAbortHandler
// (a handler that cut a response it had begun, not a bug) with the status
// the client saw and that error. Either way once, and what the request
// held is released.
func TestAbandonResponseRecord(t *testing.T) {
	path := filepath.Join(t.TempDir(), "access.log")
	l, err := accesslog.New(accesslog.Config{Path: path, Metrics: metrics.NewSet()})
	if err != nil {
		t.Fatal(err)
	}
	o := &observer{log: l, logRatio: 1}
	var inflight atomic.Int64
	for i, p := range []any{"a bug", http.ErrAbortHandler} {
		req := httptest.NewRequest("GET", fmt.Sprintf("/%d", i), nil)
		rec := o.begin(sideClient, req, http.Header{}, nil, "demo/x")
		inflight.Add(1)
		h := reqHold{inflight: &inflight}
		resp := &http.Response{StatusCode: 200, Body: io.NopCloser(strings.NewReader("body"))}
		h.onDoneIn(resp, nil)
		rec.endOnBody(resp)
		abandonResponse(resp.Body, p, false)
		abandonResponse(resp.Body, p, false) // a second time: nothing more
		resp.Body.Close()
		if n := inflight.Load(); n != 0 {
			t.Errorf("%v: %d in flight, want 0", p, n)
		}
	}
	l.Close()
	lines := readLog(t, path)
	if len(lines) != 2 {
		t.Fatalf("%d lines, want 2: %v", len(lines), lines)
	}
	for i, want := range []struct {
		status float64
		err    string
	}{{500, "panic: a bug"}, {200, http.ErrAbortHandler.Error()}} {
		if lines[i]["status"] != want.status || lines[i]["error"] != want.err {
			t.Errorf("line %d: %v; want status %v, error %q", i, lines[i], want.status, want.err)
		}
	}
}

// closeCountBody counts its Closes; it is read to its end at once.
type closeCountBody struct {
	io.Reader
	closes int
}

func (b *closeCountBody) Close() error { b.closes++; return nil }

// TestAbandonClosesBodyReadToEnd: a response body read to its end (its
// request's hold released by the read) whose request then panics before
// the body is closed (writing its last bytes to the client) is still
// closed when it is given up: its wrappers release on Close only
// (releaseOnClose: the attempt's node watch stays in nodeWatches for
// good, its per-try timer runs on). A body closed before is not closed
// again (the fast path lends its wrapper to the next request). On the
// fast path (endConn) and net/http's (endCall).
func TestAbandonClosesBodyReadToEnd(t *testing.T) {
	s := &l7{a: &Agent{log: slog.New(slog.DiscardHandler)}}
	s.a.m.panics = metrics.NewSet().NewCounter("panics")
	for _, path := range []string{"fast path", "net/http"} {
		var inflight atomic.Int64
		inflight.Add(1)
		h := reqHold{inflight: &inflight}
		inner := &closeCountBody{Reader: strings.NewReader("body")}
		released := 0
		resp := &http.Response{StatusCode: http.StatusOK, Body: &releaseOnClose{ReadCloser: inner, release: func() { released++ }}}
		cs := &h1ClientConn{}
		var up upstreamBody
		if path == "fast path" {
			h.onDoneIn(resp, &cs.done)
			cs.open = resp.Body
		} else {
			h.onDoneIn(resp, nil)
			up.body.Store(&resp.Body)
		}
		if b, err := io.ReadAll(resp.Body); string(b) != "body" || err != nil {
			t.Fatalf("%s: read %q, %v", path, b, err)
		}
		if n := inflight.Load(); n != 0 {
			t.Fatalf("%s: %d in flight after the body's end, want 0", path, n)
		}
		got := func() (p any) {
			defer func() { p = recover() }()
			if path == "fast path" {
				defer cs.endConn()
			} else {
				defer endCall(&up)
			}
			panic("test: a bug while writing the response's last bytes")
		}()
		if got == nil {
			t.Fatalf("%s: the panic stopped", path)
		}
		if inner.closes != 1 || released != 1 {
			t.Errorf("%s: body closed %d times, its attempt released %d times; want 1, 1", path, inner.closes, released)
		}
		if n := inflight.Load(); n != 0 {
			t.Errorf("%s: %d in flight, want 0", path, n)
		}
	}
	// Closed, then the connection ends (normally or in a panic): not
	// closed again.
	var inflight atomic.Int64
	inflight.Add(1)
	h := reqHold{inflight: &inflight}
	inner := &closeCountBody{Reader: strings.NewReader("body")}
	cs := &h1ClientConn{}
	resp := &http.Response{StatusCode: http.StatusOK, Body: inner}
	h.onDoneIn(resp, &cs.done)
	io.ReadAll(resp.Body)
	resp.Body.Close()
	cs.endConn()
	if inner.closes != 1 || inflight.Load() != 0 {
		t.Errorf("closed body: closed %d times, %d in flight; want 1, 0", inner.closes, inflight.Load())
	}
}
