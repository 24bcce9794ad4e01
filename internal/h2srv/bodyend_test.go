package h2srv

import (
	"io"
	"net/http"
	"testing"
	"time"
)

// TestBodyEndWithLastBytes: a request body whose last DATA frame carries
// END_STREAM is read as its bytes together with io.EOF, so a proxy can
// send them on with the end (h2up: one DATA frame with END_STREAM
// instead of two frames).
func TestBodyEndWithLastBytes(t *testing.T) {
	type result struct {
		n   int
		err error
	}
	got := make(chan result, 1)
	addr := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, 64)
		n, err := r.Body.Read(buf)
		got <- result{n, err}
		w.WriteHeader(http.StatusNoContent)
	})})
	rc := newRawClient(t, addr)
	rc.headers(1, false, ":method", "POST")
	if err := rc.fr.WriteData(1, true, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-got:
		if r.n != 5 || r.err != io.EOF {
			t.Fatalf("first read: %d bytes, %v; want 5 and io.EOF", r.n, r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the handler read nothing")
	}
	if s := status(rc.next()); s != "204" {
		t.Fatalf("status %s", s)
	}
}

// TestBodyReadReady: the body says a read would wait until its bytes or
// its end come (h2up sends a ready body on the handler's goroutine), and
// a read then returns at once.
func TestBodyReadReady(t *testing.T) {
	type result struct {
		before, after bool
		n             int
		err           error
	}
	sent := make(chan struct{})
	got := make(chan result, 1)
	addr := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rr := r.Body.(interface{ ReadReady() bool })
		var res result
		res.before = rr.ReadReady()
		close(sent)
		for deadline := time.Now().Add(10 * time.Second); !rr.ReadReady() && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond) // polls a condition, with a deadline
		}
		res.after = rr.ReadReady()
		res.n, res.err = r.Body.Read(make([]byte, 64))
		got <- res
		w.WriteHeader(http.StatusNoContent)
	})})
	rc := newRawClient(t, addr)
	rc.headers(1, false, ":method", "POST")
	select {
	case <-sent:
	case <-time.After(10 * time.Second):
		t.Fatal("the handler did not run")
	}
	if err := rc.fr.WriteData(1, true, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-got:
		if r.before || !r.after || r.n != 5 || r.err != io.EOF {
			t.Fatalf("ready before the DATA %v, after %v; read %d bytes, %v", r.before, r.after, r.n, r.err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the handler read nothing")
	}
	if s := status(rc.next()); s != "204" {
		t.Fatalf("status %s", s)
	}
}
