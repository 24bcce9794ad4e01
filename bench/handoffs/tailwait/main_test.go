package main

import (
	"bytes"
	"regexp"
	"runtime"
	"runtime/trace"
	"strings"
	"testing"
)

// TestTimesRequestsOfAConnectionLoop: a goroutine that waits for a
// request (readClient), then for its answer (readUp), in a loop has each
// round counted as one request; a wake of its client read that brings
// nothing counts as a spurious wake before the next request; a collection
// run while a request waits for its answer marks that request as in a GC.
func TestTimesRequestsOfAConnectionLoop(t *testing.T) {
	// One P, and a yield before each send: the loop has blocked on its
	// read by then, as a proxy's on an empty socket (a send to a receiver
	// not yet there would not block it).
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	var buf bytes.Buffer
	if err := trace.Start(&buf); err != nil {
		t.Skip("tracing already on:", err)
	}
	const rounds, every = 100, 4
	client, backend := make(chan bool), make(chan struct{})
	done := make(chan struct{})
	go serve(client, backend, done)
	for i := range rounds {
		if i%every == 0 {
			runtime.Gosched()
			client <- false // a wake with nothing to read
		}
		runtime.Gosched()
		client <- true
		if i == rounds/2 {
			runtime.GC() // while the request waits for its answer
		}
		runtime.Gosched()
		backend <- struct{}{}
	}
	runtime.Gosched()
	close(client)
	<-done
	trace.Stop()

	res, err := analyze(&buf, regexp.MustCompile(`\.readClient$`), regexp.MustCompile(`\.readUp$`))
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	res.print(&out, false)
	// Now and then a send still finds the loop not yet blocked (another
	// goroutine ran at the yield): a few rounds are not seen, or seen as
	// a wake that brought nothing.
	if n := len(res.reqs); n < rounds*9/10 || n > rounds {
		t.Errorf("%d requests, want %d:\n%s", n, rounds, out.String())
	}
	if n := res.spuriousWakes; n < rounds/every-3 || n > rounds/every+3 {
		t.Errorf("%d spurious wakes, want %d:\n%s", n, rounds/every, out.String())
	}
	inGC := 0
	for _, q := range res.reqs {
		inGC += b2i(q.gc)
	}
	if inGC == 0 {
		t.Errorf("no request in a GC:\n%s", out.String())
	}
}

// serve is the connection loop: a request, then its answer.
func serve(client chan bool, backend chan struct{}, done chan struct{}) {
	defer close(done)
	for {
		req, ok := readClient(client)
		if !ok {
			return
		}
		if req {
			readUp(backend)
		}
	}
}

//go:noinline
func readClient(c chan bool) (req, ok bool) {
	req, ok = <-c
	return req, ok
}

//go:noinline
func readUp(c chan struct{}) { <-c }
