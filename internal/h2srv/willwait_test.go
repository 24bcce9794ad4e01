package h2srv

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// sendTogether writes the HEADERS of streams ids (path paths[i], the
// request ended) in one write: the server reads them in one read, and
// with InlineAll runs their handlers in turn on the read loop.
func sendTogether(rc *rawClient, ids []uint32, paths []string) {
	rc.t.Helper()
	var buf bytes.Buffer
	w := &rawClient{t: rc.t, c: rc.c, fr: http2.NewFramer(&buf, nil)}
	for i, id := range ids {
		w.headers(id, true, ":path", paths[i])
	}
	if _, err := rc.c.Write(buf.Bytes()); err != nil {
		rc.t.Fatal(err)
	}
}

// readEnds reads rc's frames until each of streams ids ended and returns
// their bodies (frames of other streams are dropped); t fails past the
// connection's deadline.
func readEnds(rc *rawClient, ids ...uint32) map[uint32]string {
	rc.t.Helper()
	bodies := map[uint32]*strings.Builder{}
	for _, id := range ids {
		bodies[id] = new(strings.Builder)
	}
	out := map[uint32]string{}
	for len(out) < len(ids) {
		switch f := rc.next().(type) {
		case *http2.DataFrame:
			if b := bodies[f.StreamID]; b != nil {
				b.Write(f.Data())
				if f.StreamEnded() {
					out[f.StreamID] = b.String()
				}
			}
		case *http2.MetaHeadersFrame:
			if b := bodies[f.StreamID]; b != nil && f.StreamEnded() {
				out[f.StreamID] = b.String()
			}
		case *http2.RSTStreamFrame:
			if bodies[f.StreamID] != nil {
				rc.t.Fatalf("stream %d reset: %v", f.StreamID, f.ErrCode)
			}
		}
	}
	return out
}

// releaser closes ch when called, or at the test's end (a failed test's
// handlers must not hold up serve's cleanup, registered before).
func releaser(t *testing.T, ch chan struct{}) (release func()) {
	var once sync.Once
	release = func() { once.Do(func() { close(ch) }) }
	t.Cleanup(release)
	return release
}

// TestWillWaitHandsQueueOver: with InlineAll, a handler that calls
// WillWait before it waits gives the read loop up at once: the stream
// queued behind it in the same read is answered while it still waits
// (the take-over's timer set past the test's deadline: without the call
// the second stream waits for the first's handler).
func TestWillWaitHandsQueueOver(t *testing.T) {
	setInlineLimit(t, time.Hour)
	inline := make(chan bool, 4)
	blocked := make(chan struct{})
	addr := serve(t, &Server{InlineAll: true, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/wait" {
			inline <- onReadLoop()
			WillWait(wrapped{w})
			<-blocked
		}
		io.WriteString(w, r.URL.Path)
	})})
	release := releaser(t, blocked)
	rc := newRawClient(t, addr)
	rc.c.SetDeadline(time.Now().Add(10 * time.Second))
	before := takeOvers.Load()
	sendTogether(rc, []uint32{1, 3}, []string{"/wait", "/b"})
	if !<-inline {
		t.Fatal("/wait's handler ran on a worker: the test shows nothing")
	}
	if got := readUntilEnd(rc, 3, nil); got != "/b" { // fails at the deadline without WillWait
		t.Fatalf("stream 3: %q", got)
	}
	if takeOvers.Load() == before {
		t.Fatal("stream 3 answered with no take-over")
	}
	release()
	if got := readUntilEnd(rc, 1, nil); got != "/wait" {
		t.Fatalf("stream 1: %q", got)
	}
	// A lone stream keeps the read loop: WillWait does nothing there.
	rc.c.SetDeadline(time.Now().Add(10 * time.Second))
	for id := uint32(5); ; id += 2 {
		if id > 5+2*(skipAfterTakeOver+4) {
			t.Fatal("no lone stream ran on the read loop after the take-over")
		}
		before = takeOvers.Load()
		sendTogether(rc, []uint32{id}, []string{"/wait"})
		if <-inline {
			if got := readUntilEnd(rc, id, nil); got != "/wait" || takeOvers.Load() != before {
				t.Fatalf("lone stream %d: %q, %d take-overs", id, got, takeOvers.Load()-before)
			}
			break
		}
		readUntilEnd(rc, id, nil)
	}
}

// TestTakeOverHandsQueueOver: a handler on the read loop that blocks
// without WillWait is taken over from after inlineLimit, and the streams
// queued behind it go to workers then, not when it returns.
func TestTakeOverHandsQueueOver(t *testing.T) {
	setInlineLimit(t, 20*time.Millisecond)
	inline := make(chan bool, 4)
	blocked := make(chan struct{})
	addr := serve(t, &Server{InlineAll: true, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/block" {
			inline <- onReadLoop()
			<-blocked
		}
		io.WriteString(w, r.URL.Path)
	})})
	release := releaser(t, blocked)
	rc := newRawClient(t, addr)
	rc.c.SetDeadline(time.Now().Add(10 * time.Second))
	sendTogether(rc, []uint32{1, 3, 5}, []string{"/block", "/b", "/c"})
	if !<-inline {
		t.Fatal("/block's handler ran on a worker: the test shows nothing")
	}
	if got := readEnds(rc, 3, 5); got[3] != "/b" || got[5] != "/c" {
		t.Fatalf("streams 3 and 5: %v", got)
	}
	release()
	if got := readUntilEnd(rc, 1, nil); got != "/block" {
		t.Fatalf("stream 1: %q", got)
	}
}

// chanFlusher signals its flushes.
type chanFlusher chan struct{}

func (f chanFlusher) FlushPending() {
	select {
	case f <- struct{}{}:
	default:
	}
}

// TestWillWaitFlushesBatch: the flushes that handlers run before it on
// the read loop left for the batch's end (AtWait) are made when a
// handler gives the read loop up (WillWait), not when it returns: that
// handler waits here for them.
func TestWillWaitFlushesBatch(t *testing.T) {
	setInlineLimit(t, time.Hour)
	fl := make(chanFlusher, 1)
	got := make(chan bool, 1)
	addr := serve(t, &Server{InlineAll: true, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/left":
			if !AtWait(w, fl) {
				got <- false // not on the read loop: the test shows nothing
			}
		case "/wait":
			WillWait(w)
			select {
			case <-fl:
				got <- true
			case <-time.After(5 * time.Second):
				got <- false
			}
		}
		io.WriteString(w, r.URL.Path)
	})})
	rc := newRawClient(t, addr)
	rc.c.SetDeadline(time.Now().Add(10 * time.Second))
	sendTogether(rc, []uint32{1, 3}, []string{"/left", "/wait"})
	if !<-got {
		t.Fatal("/left's flush was not made while /wait waited")
	}
	readUntilEnd(rc, 1, nil)
	readUntilEnd(rc, 3, nil)
}
