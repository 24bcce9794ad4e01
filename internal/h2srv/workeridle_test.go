package h2srv

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestIdleWorkersEnd: handler goroutines started for streams answered at
// once end after workerIdle with no stream, the janitor with the last of
// them; a stream after that gets a worker (and a janitor) again, and
// every stream gets its own response. Fails if workers wait for good (the
// plain receive without the janitor's empty task) or the janitor leaks.
func TestIdleWorkersEnd(t *testing.T) {
	old := workerIdle
	workerIdle = 50 * time.Millisecond
	t.Cleanup(func() { workerIdle = old })
	release := make(chan struct{})
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("hold") != "" {
			<-release // several streams at once: several workers
		}
		fmt.Fprint(w, r.URL.Path)
	})}
	addr := serve(t, s)
	c, _ := h2cClient(t)
	get := func(path string) error {
		res, err := c.Get("http://" + addr + path)
		if err != nil {
			return err
		}
		defer res.Body.Close()
		b, err := io.ReadAll(res.Body)
		if err != nil {
			return err
		}
		if want, _, _ := strings.Cut(path, "?"); string(b) != want {
			return fmt.Errorf("%s: got %q", path, b) // another stream's bytes
		}
		return nil
	}
	round := func() {
		const n = 6
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs <- get(fmt.Sprintf("/s%d?hold=1", i))
			}()
		}
		waitUntil(t, "streams held by workers", func() bool { return s.workers.Load() >= 2 })
		close(release)
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		release = make(chan struct{})
	}
	round()
	waitUntil(t, "idle workers and the janitor to end", func() bool {
		return s.workers.Load() == 0 && !s.janitorOn.Load() && s.idleWorkers.Load() == 0
	})
	round()
	if err := get("/after"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "idle workers and the janitor to end again", func() bool {
		return s.workers.Load() == 0 && !s.janitorOn.Load()
	})
}

// waitUntil polls cond until it holds, failing the test after 10 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond) // polling, bounded by the deadline
	}
}
