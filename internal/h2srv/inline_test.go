package h2srv

import (
	"io"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// onReadLoop: the caller (a handler) runs on the read loop's goroutine
// (runInline), not a worker's.
func onReadLoop() bool {
	pcs := make([]uintptr, 64)
	frames := runtime.CallersFrames(pcs[:runtime.Callers(2, pcs)])
	for {
		f, more := frames.Next()
		if strings.HasSuffix(f.Function, "h2srv.(*conn).runInline") {
			return true
		}
		if !more {
			return false
		}
	}
}

// setInlineLimit sets inlineLimit for one test.
func setInlineLimit(t *testing.T, d time.Duration) {
	old := inlineLimit.Swap(int64(d))
	t.Cleanup(func() { inlineLimit.Store(old) })
}

// readUntilEnd reads rc's frames until stream id ends (or is reset) and
// returns its body; t fails past the connection's deadline.
func readUntilEnd(rc *rawClient, id uint32, onData func(*http2.DataFrame)) string {
	rc.t.Helper()
	var body strings.Builder
	for {
		switch f := rc.next().(type) {
		case *http2.DataFrame:
			if f.StreamID != id {
				continue
			}
			body.Write(f.Data())
			if onData != nil {
				onData(f)
			}
			if f.StreamEnded() {
				return body.String()
			}
		case *http2.MetaHeadersFrame:
			if f.StreamID == id && f.StreamEnded() {
				return body.String()
			}
		case *http2.RSTStreamFrame:
			if f.StreamID == id {
				rc.t.Fatalf("stream %d reset: %v", id, f.ErrCode)
			}
		}
	}
}

// TestInlineLoneStream: a lone stream whose request has ended runs on the
// read loop; a stream that comes while another one's handler runs goes to
// a worker, and is answered while the first still runs (the read loop
// handed to another goroutine once the first ran past inlineLimit).
func TestInlineLoneStream(t *testing.T) {
	setInlineLimit(t, 20*time.Millisecond)
	release := make(chan struct{})
	inline := make(chan bool, 8)
	addr := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inline <- onReadLoop()
		if r.URL.Path == "/block" {
			<-release
		}
		io.WriteString(w, "ok")
	})})
	rc := newRawClient(t, addr)
	rc.c.SetDeadline(time.Now().Add(10 * time.Second))
	rc.headers(1, true)
	if got := readUntilEnd(rc, 1, nil); got != "ok" {
		t.Fatalf("stream 1: %q", got)
	}
	if !<-inline {
		t.Fatal("a lone stream's handler ran on a worker, want the read loop")
	}
	rc.headers(3, true, ":path", "/block")
	if !<-inline {
		t.Fatal("the blocking stream's handler ran on a worker, want the read loop")
	}
	before := takeOvers.Load()
	rc.headers(5, true)
	if got := readUntilEnd(rc, 5, nil); got != "ok" {
		t.Fatalf("stream 5: %q", got)
	}
	if takeOvers.Load() == before {
		t.Fatal("stream 5 answered with no take-over of the read loop")
	}
	if <-inline {
		t.Fatal("a second stream's handler ran on the read loop")
	}
	close(release)
	if got := readUntilEnd(rc, 3, nil); got != "ok" {
		t.Fatalf("stream 3: %q", got)
	}
	// The read loop comes back to serve's goroutine: within a few lone
	// streams (the other goroutine gives it back at its next wait), one
	// runs there again.
	for id := uint32(7); ; id += 2 {
		if id > 7+2*(skipAfterMultiplex+4) {
			t.Fatal("no lone stream ran on the read loop after a take-over")
		}
		rc.headers(id, true)
		readUntilEnd(rc, id, nil)
		if <-inline {
			break
		}
	}
}

// TestInlineWindowUpdateMidResponse: a handler on the read loop whose
// response is larger than the client's window gets the client's
// WINDOW_UPDATEs: the reading goes to another goroutine when it waits for
// window, not after inlineLimit (set past the test's deadline here).
func TestInlineWindowUpdateMidResponse(t *testing.T) {
	setInlineLimit(t, time.Hour)
	want := strings.Repeat("x", 1000)
	inline := make(chan bool, 1)
	addr := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inline <- onReadLoop()
		io.WriteString(w, want)
	})})
	rc := newRawClient(t, addr, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 100})
	rc.c.SetDeadline(time.Now().Add(10 * time.Second))
	rc.headers(1, true)
	got := readUntilEnd(rc, 1, func(f *http2.DataFrame) {
		if n := len(f.Data()); n > 0 && !f.StreamEnded() {
			rc.fr.WriteWindowUpdate(1, uint32(n))
		}
	})
	if got != want {
		t.Fatalf("body of %d bytes, want %d", len(got), len(want))
	}
	if !<-inline {
		t.Fatal("the handler ran on a worker, want the read loop")
	}
}

// TestInlineResetReachesHandler: a client's RST_STREAM reaches a handler
// on the read loop that waits for something else (an upstream's
// response): its context ends.
func TestInlineResetReachesHandler(t *testing.T) {
	setInlineLimit(t, 20*time.Millisecond)
	started := make(chan bool, 1)
	cancelled := make(chan struct{})
	addr := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started <- onReadLoop()
		<-r.Context().Done()
		close(cancelled)
	})})
	rc := newRawClient(t, addr)
	rc.headers(1, true)
	if !<-started {
		t.Fatal("the handler ran on a worker, want the read loop")
	}
	rc.fr.WriteRSTStream(1, http2.ErrCodeCancel)
	select {
	case <-cancelled:
	case <-time.After(10 * time.Second):
		t.Fatal("handler's context not cancelled by RST_STREAM")
	}
}

// TestInlinePingAnswered: a PING that comes while a handler runs on the
// read loop is acknowledged before that handler returns.
func TestInlinePingAnswered(t *testing.T) {
	setInlineLimit(t, 20*time.Millisecond)
	release := make(chan struct{})
	defer close(release)
	started := make(chan bool, 1)
	addr := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started <- onReadLoop()
		<-release
	})})
	rc := newRawClient(t, addr)
	rc.c.SetDeadline(time.Now().Add(10 * time.Second))
	rc.headers(1, true)
	if !<-started {
		t.Fatal("the handler ran on a worker, want the read loop")
	}
	rc.fr.WritePing(false, [8]byte{9})
	for {
		if p, ok := rc.next().(*http2.PingFrame); ok && p.IsAck() && p.Data == [8]byte{9} {
			return
		}
	}
}

// TestInlineNotWithBodyOpen: a stream whose body has not ended when the
// read loop would wait goes to a worker (its handler waits for the body,
// which only the read loop delivers).
func TestInlineNotWithBodyOpen(t *testing.T) {
	setInlineLimit(t, time.Hour)
	inline := make(chan bool, 1)
	addr := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inline <- onReadLoop()
		b, _ := io.ReadAll(r.Body)
		w.Write(b)
	})})
	rc := newRawClient(t, addr)
	rc.c.SetDeadline(time.Now().Add(10 * time.Second))
	rc.headers(1, false, ":method", "POST")
	if <-inline {
		t.Fatal("a handler whose body is open ran on the read loop")
	}
	rc.fr.WriteData(1, true, []byte("body"))
	if got := readUntilEnd(rc, 1, nil); got != "body" {
		t.Fatalf("body %q", got)
	}
}
