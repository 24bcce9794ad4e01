package agent

import (
	"io"
	"net/http"
	"sync/atomic"
	"testing"
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
