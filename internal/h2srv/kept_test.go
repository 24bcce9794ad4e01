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
