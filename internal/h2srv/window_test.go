package h2srv

import (
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/flowwin"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// TestRequestWindowGrowsWhileHandlerReads: a request body the handler
// reads as it comes grows its stream's window from 64 KiB to 1 MiB (one
// WINDOW_UPDATE gives more than 512 KiB, which only a 1 MiB window can),
// and the growth goes back to the budget once the body has been read to
// its end, while the handler goes on. A body nobody reads gets 64 KiB
// (TestClientOverrunsWindow).
func TestRequestWindowGrowsWhileHandlerReads(t *testing.T) {
	const budget = 1 << 30
	old := flowwin.Process.Swap(budget)
	defer flowwin.Process.Swap(old)
	const size = 8 << 20
	got := make(chan int64, 1)
	handlerDone := make(chan struct{})
	defer close(handlerDone)
	addr := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		got <- n
		<-handlerDone // a response that goes on after the body (a stream, say)
	})})
	rc := newRawClient(t, addr)
	rc.c.SetDeadline(time.Now().Add(20 * time.Second))
	rc.headers(1, false, ":method", "POST")
	var sent int64
	chunk := make([]byte, 16384)
	maxInc := rc.sendWithinWindows(func(room int64) (int64, bool) {
		k := min(int64(len(chunk)), room, size-sent)
		if err := rc.fr.WriteData(1, sent+k == size, chunk[:k]); err != nil {
			t.Fatal(err)
		}
		sent += k
		return k, sent == size
	})
	select {
	case n := <-got:
		if n != size {
			t.Fatalf("handler read %d bytes, want %d", n, size)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("handler did not read the body")
	}
	if maxInc <= 512<<10 {
		t.Fatalf("largest stream WINDOW_UPDATE %d KiB: the window did not reach 1 MiB", maxInc>>10)
	}
	testenv.WaitFor(t, 10*time.Second, "the growth to go back to the budget, the handler still running", func() bool {
		return flowwin.Process.Left() == budget
	})
}

// TestPaddingGoesBackToTheClient: padded DATA frames (one byte of data,
// 255 of padding) count against the stream's window, and the server gives
// the padding back: a body of many of them goes through a 64 KiB window.
// The padding was credited locally only, so the client's window shrank
// by 255 bytes a frame until the stream stalled.
func TestPaddingGoesBackToTheClient(t *testing.T) {
	got := make(chan int64, 1)
	addr := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		got <- n
	})})
	rc := newRawClient(t, addr)
	rc.c.SetDeadline(time.Now().Add(20 * time.Second))
	rc.headers(1, false, ":method", "POST")
	const frames = 1024 // 256 KiB of flow-controlled bytes, four times the initial window
	pad := make([]byte, 255)
	sent := 0
	rc.sendWithinWindows(func(room int64) (int64, bool) {
		if room < 257 { // the pad length byte, the data, the padding
			return 0, false
		}
		if err := rc.fr.WriteDataPadded(1, sent == frames-1, []byte{'x'}, pad); err != nil {
			t.Fatal(err)
		}
		sent++
		return 257, sent == frames
	})
	select {
	case n := <-got:
		if n != frames {
			t.Fatalf("handler read %d bytes, want %d", n, frames)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("handler did not read the body")
	}
}

// sendWithinWindows sends stream 1's DATA within the connection's and the
// stream's send windows, as the server's SETTINGS and WINDOW_UPDATEs give
// them: send writes one frame of at most room flow-controlled bytes and
// returns how many it used (0: none fits, wait for credit) and whether it
// was the last. It returns the largest stream WINDOW_UPDATE seen.
func (rc *rawClient) sendWithinWindows(send func(room int64) (used int64, last bool)) (maxInc int64) {
	rc.t.Helper()
	win := testenv.NewH2Windows()
	for {
		for win.Room() > 0 {
			used, last := send(win.Room())
			win.Sent(used)
			if last {
				return maxInc
			}
			if used == 0 {
				break
			}
		}
		f, err := rc.fr.ReadFrame()
		if err != nil {
			rc.t.Fatalf("waiting for window: %v (the stream's window was not given back)", err)
		}
		maxInc = max(maxInc, win.Take(f, rc.fr))
	}
}
