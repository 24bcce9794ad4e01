package agent

import (
	"io"
	"strings"
	"testing"
	"time"
)

// panicReader panics in its Read (a bug in a body below the replay
// buffer: the pool's sendRest recovers it, PoolConfig.OnPanic).
type panicReader struct{}

func (panicReader) Read([]byte) (int, error) { panic("body read") }

// TestReplayBodySrcPanic: a panic in the read of the body behind a retry's
// replay buffer goes up as a panic its reader's goroutine can recover (it
// unlocked the buffer's mutex twice: "sync: unlock of unlocked mutex", a
// fatal error no recover stops, the agent's process ended), and a later
// attempt's read fails rather than waiting for good on the read that
// never ended.
func TestReplayBodySrcPanic(t *testing.T) {
	rb := newReplayBody(io.MultiReader(strings.NewReader("abc"), panicReader{}), 1<<10)
	first := rb.attempt()
	b := make([]byte, 8)
	if n, err := first.Read(b); n != 3 || err != nil {
		t.Fatalf("first read: %d, %v", n, err)
	}
	got := make(chan any, 1)
	go func() {
		defer func() { got <- recover() }()
		first.Read(b)
	}()
	select {
	case p := <-got:
		if p != "body read" {
			t.Fatalf("recovered %v, want the body's panic", p)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the panicking read did not return")
	}
	next := rb.attempt()
	done := make(chan error, 1)
	go func() {
		_, err := io.ReadAll(next)
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a later attempt read the body whole after its read panicked")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a later attempt still waits 5 s for the read that panicked")
	}
	if rb.replayable() {
		t.Fatal("the body is replayable after its read panicked")
	}
}
