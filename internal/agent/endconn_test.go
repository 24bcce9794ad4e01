package agent

import (
	"fmt"
	"io"
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
		abandonResponse(resp.Body, p)
		abandonResponse(resp.Body, p) // a second time: nothing more
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
