package h2srv

import (
	"context"
	"net/http"
	"testing"
	"time"
)

// chanEnder is an Ender that closes its channel when told.
type chanEnder chan struct{}

func (e chanEnder) ContextEnded() { close(e) }

func told(e chanEnder) bool {
	select {
	case <-e:
		return true
	case <-time.After(10 * time.Second):
		return false
	}
}

// TestWatchEnd: a stream's Ender (StreamRef.WatchEnd) is told when the
// client resets the stream, once, as context.AfterFunc's function would
// be; WatchEnd takes only the request's own context, one Ender at a time,
// and none after StopWatch has given the place back; RefOf takes only the
// server's own writer.
func TestWatchEnd(t *testing.T) {
	e1, e2, e3 := make(chanEnder), make(chanEnder), make(chanEnder)
	ready := make(chan struct{})
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/end" { // a response's end ends the context too
			if !RefOf(w).WatchEnd(r.Context(), e3) {
				t.Error("WatchEnd refused on /end")
			}
			return
		}
		if RefOf(wrapped{w}).Valid() {
			t.Error("RefOf of a wrapper")
		}
		ref := RefOf(w)
		if !ref.Valid() {
			t.Error("RefOf of the server's writer: none")
		}
		if ref.WatchEnd(context.WithoutCancel(r.Context()), e1) {
			t.Error("WatchEnd of a context not the request's")
		}
		if !ref.WatchEnd(r.Context(), e1) {
			t.Error("WatchEnd refused")
		}
		if ref.WatchEnd(r.Context(), e2) {
			t.Error("a second Ender taken")
		}
		ref.StopWatch(e1)
		if !ref.WatchEnd(r.Context(), e2) {
			t.Error("WatchEnd refused after StopWatch")
		}
		close(ready)
		<-r.Context().Done()
		if ref.WatchEnd(r.Context(), make(chanEnder)) {
			t.Error("WatchEnd after the context's end")
		}
	})}
	addr := serve(t, s)
	c, _ := h2cClient(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/", nil)
		if resp, err := c.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		t.Fatal("no request reached the handler")
	}
	cancel() // the client resets the stream
	if !told(e2) {
		t.Fatal("the Ender was not told of the stream's reset")
	}
	select {
	case <-e1:
		t.Error("a stopped Ender was told")
	default:
	}
	resp, err := c.Get("http://" + addr + "/end")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if !told(e3) {
		t.Fatal("the Ender was not told of the response's end")
	}
}
