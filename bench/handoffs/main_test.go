package main

import (
	"bytes"
	"runtime"
	"runtime/trace"
	"strings"
	"testing"
)

// TestCountsPingPong: two goroutines handing a token back and forth on one
// P wake each other once per round, and count names both, the waker's
// frame and where the woken one blocked.
func TestCountsPingPong(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	var buf bytes.Buffer
	if err := trace.Start(&buf); err != nil {
		t.Skip("tracing already on:", err)
	}
	const rounds = 200
	ping, pong := make(chan int), make(chan int)
	done := make(chan struct{})
	go ponger(ping, pong, done)
	pinger(ping, pong, rounds)
	<-done
	trace.Stop()

	c, err := count(&buf, 1)
	if err != nil {
		t.Fatal(err)
	}
	byPinger, byPonger := 0, 0
	for w, n := range c.wakes {
		switch {
		case w.by == "testing.tRunner" && w.frames == "handoffs.pinger" && w.woken == "handoffs.ponger" &&
			strings.HasPrefix(w.reason, "chan ") && strings.HasPrefix(w.blockedAt, "handoffs.ponger"):
			byPinger += n
		case w.by == "handoffs.ponger" && w.frames == "handoffs.ponger" && w.woken == "testing.tRunner" &&
			strings.HasPrefix(w.reason, "chan ") && strings.HasPrefix(w.blockedAt, "handoffs.pinger"):
			byPonger += n
		}
	}
	if byPinger < rounds-2 || byPinger > rounds || byPonger < rounds-2 || byPonger > rounds {
		var out bytes.Buffer
		c.print(&out, 1)
		t.Fatalf("wakes of the ponger by the pinger %d, of the pinger by the ponger %d, want %d each:\n%s", byPinger, byPonger, rounds, out.String())
	}
}

//go:noinline
func pinger(ping, pong chan int, rounds int) {
	for i := range rounds {
		ping <- i
		<-pong
	}
	close(ping)
}

//go:noinline
func ponger(ping, pong chan int, done chan struct{}) {
	defer close(done)
	for i := range ping {
		pong <- i
	}
}

// TestCountRefusesGarbage: bytes that are no trace are an error, not a
// crash or empty counts.
func TestCountRefusesGarbage(t *testing.T) {
	if _, err := count(strings.NewReader("not a trace"), 3); err == nil {
		t.Fatal("no error for bytes that are no trace")
	}
}

// TestCountsYieldsRunsAndGC: a goroutine calling runtime.Gosched is counted
// as yielding there (with the runtime's frame and the caller's line) and as
// switched in again after each yield; runtime.GC's cycles are counted.
func TestCountsYieldsRunsAndGC(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	var buf bytes.Buffer
	if err := trace.Start(&buf); err != nil {
		t.Skip("tracing already on:", err)
	}
	const rounds, gcs = 100, 3
	done := make(chan struct{})
	go yielder(rounds, done)
	<-done
	for range gcs {
		runtime.GC()
	}
	trace.Stop()

	c, err := count(&buf, 1)
	if err != nil {
		t.Fatal(err)
	}
	yields := 0
	for k, n := range c.yields {
		if strings.HasPrefix(k, "handoffs.yielder: ") && strings.Contains(k, "handoffs.yielder:") {
			yields += n
		}
	}
	if yields < rounds || c.runs["handoffs.yielder"] < rounds || c.gcs < gcs {
		var out bytes.Buffer
		c.print(&out, 1)
		t.Fatalf("yields of the yielder %d, its runs %d, GC cycles %d; want at least %d, %d, %d:\n%s",
			yields, c.runs["handoffs.yielder"], c.gcs, rounds, rounds, gcs, out.String())
	}
}

//go:noinline
func yielder(rounds int, done chan struct{}) {
	defer close(done)
	for range rounds {
		runtime.Gosched()
	}
}
