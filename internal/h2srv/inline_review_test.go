package h2srv

import (
	"context"
	"io"
	"net/http"
	"runtime"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/fogmesh/fogmesh/internal/testenv"
)

// TestInlineNotBesideWorkerWaitingForWindow: a worker's answered stream
// waiting for send window before a lone stream arrives keeps that stream
// off the read loop: its WINDOW_UPDATE is read at once, not after the lone
// stream's handler (with inlineLimit an hour: never). Review of session
// 31's inline handlers found it waiting.
func TestInlineNotBesideWorkerWaitingForWindow(t *testing.T) {
	setInlineLimit(t, time.Hour)
	started1 := make(chan struct{})
	started3 := make(chan bool, 1)
	release3 := make(chan struct{})
	defer func() {
		select {
		case <-release3:
		default:
			close(release3)
		}
	}()
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/worker" {
			close(started1)
			io.ReadAll(r.Body)
			io.WriteString(w, "worker") // waits in finish: the client's window is 0
			return
		}
		started3 <- onReadLoop()
		<-release3
		io.WriteString(w, "ok")
	})}
	addr := serve(t, s)
	rc := newRawClient(t, addr, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
	rc.c.SetDeadline(time.Now().Add(10 * time.Second))
	// Stream 1 goes to a worker: its body is open when the read loop
	// would wait.
	rc.headers(1, false, ":method", "POST", ":path", "/worker")
	<-started1
	rc.fr.WriteData(1, true, []byte("b"))
	testenv.WaitFor(t, 10*time.Second, "stream 1 to wait for window", func() bool { return streamWaitsForWindow(s) })
	rc.headers(3, true)
	if <-started3 {
		t.Fatal("stream 3's handler ran on the read loop beside a stream waiting for window")
	}
	rc.fr.WriteWindowUpdate(1, 1000)
	if got := readUntilEnd(rc, 1, nil); got != "worker" {
		t.Fatalf("stream 1: %q", got)
	}
	rc.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 65535})
	close(release3)
	if got := readUntilEnd(rc, 3, nil); got != "ok" {
		t.Fatalf("stream 3: %q", got)
	}
}

// streamWaitsForWindow: a stream of one of s's connections waits for send
// window.
func streamWaitsForWindow(s *Server) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for sc := range s.conns {
		sc.mu.Lock()
		for _, st := range sc.streams {
			if st.waitingWin {
				sc.mu.Unlock()
				return true
			}
		}
		sc.mu.Unlock()
	}
	return false
}

// TestInlineHandlerGoexit: a handler on the read loop that ends its
// goroutine (runtime.Goexit, as t.FailNow in a test's handler) ends
// serve's goroutine with it. The connection must then end once, and the
// take-over timer of that handler must not start a reader on the ended
// connection (which closed sc.done a second time: a panic that took the
// process down).
func TestInlineHandlerGoexit(t *testing.T) {
	setInlineLimit(t, 20*time.Millisecond)
	s := &Server{}
	conns := make(chan *conn, 1)
	s.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		for sc := range s.conns {
			conns <- sc
		}
		s.mu.Unlock()
		if onReadLoop() {
			runtime.Goexit()
		}
	})
	addr := serve(t, s)
	rc := newRawClient(t, addr)
	rc.c.SetDeadline(time.Now().Add(10 * time.Second))
	rc.headers(1, true)
	sc := <-conns
	select {
	case <-sc.done:
	case <-time.After(10 * time.Second):
		t.Fatal("connection not ended after its serve goroutine ended")
	}
	// The timer armed for the handler fires after inlineLimit if the
	// state is still inlineRun: wait for a state it can no longer change
	// (on b3e827c it takes the ended connection over and closes sc.done
	// again: the test binary panics).
	deadline := time.Now().Add(10 * time.Second)
	for sc.inline.Load() == inlineRun {
		if time.Now().After(deadline) {
			t.Fatal("the inline state stays inlineRun after the connection ended")
		}
		runtime.Gosched()
	}
	if _, err := rc.fr.ReadFrame(); err == nil {
		for {
			if _, err := rc.fr.ReadFrame(); err != nil {
				break
			}
		}
	}
}

// TestInlineHandlerPanic: a handler on the read loop that panics is
// recovered as a worker's is (st.run): its stream is reset
// (INTERNAL_ERROR) and the connection serves the next stream.
func TestInlineHandlerPanic(t *testing.T) {
	setInlineLimit(t, time.Hour)
	inline := make(chan bool, 2)
	addr := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inline <- onReadLoop()
		if r.URL.Path == "/panic" {
			panic("inline handler panic")
		}
		io.WriteString(w, "ok")
	})})
	rc := newRawClient(t, addr)
	rc.c.SetDeadline(time.Now().Add(10 * time.Second))
	rc.headers(1, true, ":path", "/panic")
	for {
		if r, ok := rc.next().(*http2.RSTStreamFrame); ok && r.StreamID == 1 {
			if r.ErrCode != http2.ErrCodeInternal {
				t.Fatalf("stream 1 reset with %v, want INTERNAL_ERROR", r.ErrCode)
			}
			break
		}
	}
	if !<-inline {
		t.Fatal("the panicking handler ran on a worker, want the read loop")
	}
	rc.headers(3, true)
	if got := readUntilEnd(rc, 3, nil); got != "ok" {
		t.Fatalf("stream 3: %q", got)
	}
	if !<-inline {
		t.Fatal("the next lone stream ran on a worker: the read loop was taken over")
	}
}

// TestInlineShutdownWaitsForStream: Shutdown while a handler runs on the
// read loop (no take-over yet: inlineLimit is long) counts its stream as
// open: the client gets the GOAWAY with that stream as the last, then the
// whole response, and Shutdown returns once the connection has ended.
func TestInlineShutdownWaitsForStream(t *testing.T) {
	setInlineLimit(t, time.Hour)
	started := make(chan bool, 1)
	release := make(chan struct{})
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started <- onReadLoop()
		<-release
		io.WriteString(w, "ok")
	})}
	addr := serve(t, s)
	rc := newRawClient(t, addr)
	rc.c.SetDeadline(time.Now().Add(10 * time.Second))
	rc.headers(1, true)
	if !<-started {
		t.Fatal("the handler ran on a worker, want the read loop")
	}
	done := make(chan error, 1)
	go func() { done <- s.Shutdown(context.Background()) }()
	for {
		if g, ok := rc.next().(*http2.GoAwayFrame); ok {
			if g.LastStreamID != 1 || g.ErrCode != http2.ErrCodeNo {
				t.Fatalf("GOAWAY last %d code %v, want 1 NO_ERROR", g.LastStreamID, g.ErrCode)
			}
			break
		}
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned (%v) with the inline stream open", err)
	default:
	}
	close(release)
	if got := readUntilEnd(rc, 1, nil); got != "ok" {
		t.Fatalf("stream 1: %q", got)
	}
	rc.c.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not return after the stream ended and the client closed")
	}
}
