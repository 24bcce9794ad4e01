package h2srv

import (
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestInlineAll: with Server.InlineAll, streams sent together on one
// connection are served, their handlers on the read loop (AtWait takes
// their flushes, each flusher once per batch); a handler that blocks
// there is taken over from: a stream sent after it is read and answered
// meanwhile.
func TestInlineAll(t *testing.T) {
	var inline, flushes atomic.Int64
	fl := flushCounter{&flushes}
	unblock := make(chan struct{})
	s := &Server{InlineAll: true, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if AtWait(w, fl) {
			inline.Add(1)
			AtWait(w, fl)
		}
		if r.URL.Path == "/block" {
			select {
			case <-unblock:
			case <-time.After(20 * time.Second):
			}
		}
		io.WriteString(w, r.URL.Path)
	})}
	addr := serve(t, s)
	c, _ := h2cClient(t)
	get := func(path string) error {
		resp, err := c.Get("http://" + addr + path)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err == nil && string(b) != path {
			t.Errorf("%s: got %q", path, b)
		}
		return err
	}
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := get("/p" + string(rune('a'+i%26))); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if inline.Load() == 0 || flushes.Load() == 0 || flushes.Load() > inline.Load() {
		t.Fatalf("%d handlers inline, %d flushes", inline.Load(), flushes.Load())
	}

	blocked := make(chan error, 1)
	go func() { blocked <- get("/block") }()
	deadline := time.Now().Add(10 * time.Second)
	for inline.Load() < 51 && time.Now().Before(deadline) { // /block's handler runs (inline: alone)
		time.Sleep(time.Millisecond)
	}
	if err := get("/after"); err != nil { // read while /block holds the read loop's goroutine
		t.Fatal(err)
	}
	close(unblock)
	if err := <-blocked; err != nil {
		t.Fatal(err)
	}
}

type flushCounter struct{ n *atomic.Int64 }

func (f flushCounter) FlushPending() { f.n.Add(1) }
