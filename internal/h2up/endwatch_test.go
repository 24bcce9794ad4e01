package h2up_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/fogmesh/fogmesh/internal/h2up"
)

// watchCtx is a request context with its own watch of its end
// (h2up.EndWatcher), as the agent's HTTP/2 requests have.
type watchCtx struct {
	context.Context
	cancel context.CancelFunc

	mu               sync.Mutex
	e                h2up.Ender
	watched, stopped int
}

func newWatchCtx() *watchCtx {
	ctx, cancel := context.WithCancel(context.Background())
	return &watchCtx{Context: ctx, cancel: cancel}
}

func (c *watchCtx) WatchEnd(e h2up.Ender) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.e != nil || c.Err() != nil {
		return false
	}
	c.e = e
	c.watched++
	return true
}

func (c *watchCtx) StopWatch(e h2up.Ender) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.e == e {
		c.e = nil
		c.stopped++
	}
}

// end cancels the context and tells its Ender, as h2srv does.
func (c *watchCtx) end() {
	c.cancel()
	c.mu.Lock()
	e := c.e
	c.e = nil
	c.mu.Unlock()
	if e != nil {
		go e.ContextEnded()
	}
}

func (c *watchCtx) counts() (watched, stopped int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.watched, c.stopped
}

// startAndWait sends req with Start and waits for its completion.
func startAndWait(t *testing.T, pool *h2up.Pool, req *http.Request) *http.Response {
	t.Helper()
	type answer struct {
		resp *http.Response
		err  error
	}
	ch := make(chan answer, 1)
	if err := pool.Start(req, h2up.CompletionFunc(func(resp *http.Response, err error, _ *h2up.ReadLoop) {
		ch <- answer{resp, err}
	})); err != nil {
		t.Fatal(err)
	}
	select {
	case a := <-ch:
		if a.err != nil {
			t.Fatal(a.err)
		}
		return a.resp
	case <-time.After(10 * time.Second):
		t.Fatal("no completion")
		return nil
	}
}

// TestEndWatcherResets: a started request whose context watches its own
// end (h2up.EndWatcher) is watched that way, not by context.AfterFunc:
// its end resets the stream (the server sees CANCEL) and fails the body's
// read with the context's error.
func TestEndWatcherResets(t *testing.T) {
	pool, events := readyPool(t, 65535)
	ctx := newWatchCtx()
	defer ctx.cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://x/stall", nil)
	resp := startAndWait(t, pool, req)
	defer resp.Body.Close()
	if w, _ := ctx.counts(); w != 1 {
		t.Fatalf("WatchEnd called %d times, want once", w)
	}
	ctx.end()
	if ev := nextEvent(t, events); ev.reset != http2.ErrCodeCancel {
		t.Fatalf("server saw reset %v, want CANCEL", ev.reset)
	}
	read := make(chan error, 1)
	go func() {
		_, err := resp.Body.Read(make([]byte, 8))
		read <- err
	}()
	select {
	case err := <-read:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("read %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the read still waits after the context's end")
	}
}

// TestEndWatcherStopped: a started request that ends (both ways) stops
// its context's watch; the context's end after that resets nothing.
func TestEndWatcherStopped(t *testing.T) {
	pool, events := readyPool(t, 65535)
	ctx := newWatchCtx()
	defer ctx.cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://x/", nil)
	resp := startAndWait(t, pool, req)
	if _, err := io.ReadAll(resp.Body); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if ev := nextEvent(t, events); ev.reset != 0 {
		t.Fatalf("server saw reset %v", ev.reset)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		w, s := ctx.counts()
		if w == 1 && s == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("WatchEnd %d, StopWatch %d times, want once each", w, s)
		}
		time.Sleep(time.Millisecond)
	}
}
