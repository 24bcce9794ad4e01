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

// TestKeptRequestsAndLazyWakes: a request header whose values sit in its
// stream's allocation (at most 4 fields) stays its own after the stream and
// later ones on the connection ended; and a body read whose wake-up
// channel is made by its first wait still gets every wake while another
// goroutine moves the read deadline (SetReadDeadline wakes the reader).
func TestKeptRequestsAndLazyWakes(t *testing.T) {
	var mu sync.Mutex
	var kept []http.Header
	addr := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		kept = append(kept, r.Header)
		mu.Unlock()
		rc := http.NewResponseController(w)
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() { // moves the deadline while the handler waits for the body
			defer close(done)
			for {
				select {
				case <-stop:
					return
				default:
				}
				rc.SetReadDeadline(time.Now().Add(time.Minute))
			}
		}()
		b, err := io.ReadAll(r.Body)
		close(stop)
		<-done
		fmt.Fprintf(w, "%s|%d|%v", r.Header.Get("X-Id"), len(b), err)
	})})
	c, _ := h2cClient(t)
	const n = 8
	for i := range n {
		pr, pw := io.Pipe()
		go func() {
			for range 20 {
				pw.Write([]byte(strings.Repeat("b", 100)))
			}
			pw.Close()
		}()
		req, _ := http.NewRequest("POST", "http://"+addr+"/", pr)
		req.Header.Set("X-Id", fmt.Sprint(i))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := fmt.Sprintf("%d|2000|<nil>", i); string(got) != want {
			t.Fatalf("request %d: %q, want %q", i, got, want)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for i, h := range kept {
		if len(h) > len(stream{}.vals) {
			t.Fatalf("request %d: %d fields: not in the stream's array, which the test is about", i, len(h))
		}
		if h.Get("X-Id") != fmt.Sprint(i) {
			t.Errorf("kept request %d: X-Id %q; header %v", i, h.Get("X-Id"), h)
		}
	}
}

// TestDeadlineWakesWaitingWriter: a write waiting for the client's window
// without a deadline (its wake-up channel made by that wait) ends when
// another goroutine then sets a deadline that has passed: SetWriteDeadline
// wakes it, and SetReadDeadline a waiting body read the same way.
func TestDeadlineWakesWaitingWriter(t *testing.T) {
	writeErr, readErr := make(chan error, 1), make(chan error, 1)
	handlerDone := make(chan struct{})
	addr := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer close(handlerDone)
		rc := http.NewResponseController(w)
		go func() { _, err := r.Body.Read(make([]byte, 10)); readErr <- err }()
		go func() { _, err := w.Write(make([]byte, 100<<10)); writeErr <- err }() // past the 64 KiB window
		st := w.(*responseWriter).st
		deadline := time.Now().Add(10 * time.Second)
		for {
			st.sc.mu.Lock()
			waiting := st.waitingWin && st.winCh != nil && st.readCh != nil
			st.sc.mu.Unlock()
			if waiting && blockedInRead() {
				break
			}
			if time.Now().After(deadline) {
				t.Error("the write never waited for the window, or the read for the body")
				break
			}
			time.Sleep(time.Millisecond) // polling, bounded by the deadline
		}
		// One at a time: a wake signals both waiters.
		for i, set := range []func(time.Time) error{rc.SetWriteDeadline, rc.SetReadDeadline} {
			set(time.Now())
			select {
			case err := <-[]chan error{writeErr, readErr}[i]:
				if err == nil {
					t.Error("a wait ended by a passed deadline returned no error")
				}
			case <-time.After(10 * time.Second):
				t.Errorf("wait %d did not end when its deadline was set to now", i)
				return
			}
		}
	})})
	rc := newRawClient(t, addr)
	rc.headers(1, false, ":method", "POST") // the body stays open; no WINDOW_UPDATE
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-handlerDone:
			return
		default:
		}
		rc.c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		rc.fr.ReadFrame() // read what the server sends until its handler is done
	}
	t.Fatal("the handler did not return")
}
