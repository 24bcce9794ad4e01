package h2srv

import (
	"io"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/fogmesh/fogmesh/internal/flowwin"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// TestRequestWindowGrowsWhileHandlerReads: a request body the handler
// reads as it comes grows its stream's window from 64 KiB to 1 MiB (one
// WINDOW_UPDATE gives more than 512 KiB, which only a 1 MiB window can),
// and the growth goes back to the budget once the handler is done. A body
// nobody reads gets 64 KiB (TestClientOverrunsWindow).
func TestRequestWindowGrowsWhileHandlerReads(t *testing.T) {
	const budget = 1 << 30
	old := flowwin.Process.Swap(budget)
	defer flowwin.Process.Swap(old)
	const size = 8 << 20
	got := make(chan int64, 1)
	addr := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		got <- n
	})})
	rc := newRawClient(t, addr)
	rc.c.SetDeadline(time.Now().Add(20 * time.Second))
	rc.headers(1, false, ":method", "POST")
	connWin, streamWin := int64(65535), int64(65535)
	var sent, maxInc int64
	chunk := make([]byte, 16384)
	for sent < size {
		for sent < size && connWin > 0 && streamWin > 0 {
			k := min(int64(len(chunk)), connWin, streamWin, size-sent)
			if err := rc.fr.WriteData(1, sent+k == size, chunk[:k]); err != nil {
				t.Fatal(err)
			}
			sent += k
			connWin -= k
			streamWin -= k
		}
		if sent == size {
			break
		}
		f, err := rc.fr.ReadFrame()
		if err != nil {
			t.Fatalf("after %d bytes sent: %v", sent, err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if f.IsAck() {
				break
			}
			if v, ok := f.Value(http2.SettingInitialWindowSize); ok {
				streamWin += int64(v) - 65535
			}
			rc.fr.WriteSettingsAck()
		case *http2.WindowUpdateFrame:
			if f.StreamID == 0 {
				connWin += int64(f.Increment)
				break
			}
			streamWin += int64(f.Increment)
			maxInc = max(maxInc, int64(f.Increment))
		}
	}
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
	testenv.WaitFor(t, 10*time.Second, "the growth to go back to the budget", func() bool {
		return flowwin.Process.Left() == budget
	})
}
