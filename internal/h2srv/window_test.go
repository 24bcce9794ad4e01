package h2srv

import (
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/flowwin"
	"github.com/fogmesh/fogmesh/internal/testenv"
	"golang.org/x/net/http2"
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

// TestStalledStreamsLeaveTheConnectionOpen: twenty streams whose handlers
// never read (an endpoint that takes nothing) fill their 64 KiB windows,
// 1.25 MiB together, more than the connection's 1 MiB window; a stream of
// the same connection whose handler reads still gets its body through,
// because past half the connection's window the server credits it on
// receipt, lent from the budget (heldLocked). Before, the connection's
// window came back only as handlers read: sixteen such streams stopped
// the client's whole connection, as x/net's server. What was lent goes
// back once the stalled handlers end.
func TestStalledStreamsLeaveTheConnectionOpen(t *testing.T) {
	const budget = 1 << 30
	old := flowwin.Process.Swap(budget)
	defer flowwin.Process.Swap(old)
	const nStalled, readerBody = 20, 256 << 10
	release, stalledDone := make(chan struct{}), make(chan struct{}, nStalled)
	addr := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/stall" {
			<-release
			stalledDone <- struct{}{}
			return
		}
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(200)
	})})
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	rc := newRawClient(t, addr)
	rc.c.SetDeadline(time.Now().Add(20 * time.Second))
	left := map[uint32]int64{} // body bytes each stream has to send
	streamWin := map[uint32]int64{}
	connWin, initial := int64(65535), int64(65535)
	var order []uint32
	for i := range nStalled {
		id := uint32(2*i + 1)
		rc.headers(id, false, ":method", "POST", ":path", "/stall")
		left[id], streamWin[id] = flowwin.Initial, initial
		order = append(order, id)
	}
	reader := uint32(2*nStalled + 1)
	rc.headers(reader, false, ":method", "POST", ":path", "/read")
	left[reader], streamWin[reader] = readerBody, initial
	order = append(order, reader)
	chunk := make([]byte, 16384)
	for {
		for _, id := range order {
			for left[id] > 0 {
				k := min(int64(len(chunk)), left[id], connWin, streamWin[id])
				if k <= 0 {
					break
				}
				end := id == reader && k == left[id]
				if err := rc.fr.WriteData(id, end, chunk[:k]); err != nil {
					t.Fatal(err)
				}
				left[id] -= k
				connWin -= k
				streamWin[id] -= k
			}
		}
		f, err := rc.fr.ReadFrame()
		if err != nil {
			t.Fatalf("the reading stream's body stalled with %d bytes left (connection window %d): %v", left[reader], connWin, err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if v, ok := f.Value(http2.SettingInitialWindowSize); ok && !f.IsAck() {
				for id := range streamWin {
					streamWin[id] += int64(v) - initial
				}
				initial = int64(v)
			}
			if !f.IsAck() {
				rc.fr.WriteSettingsAck()
			}
		case *http2.WindowUpdateFrame:
			if f.StreamID == 0 {
				connWin += int64(f.Increment)
			} else {
				streamWin[f.StreamID] += int64(f.Increment)
			}
		case *http2.MetaHeadersFrame:
			if f.StreamID == reader {
				if st := f.PseudoValue("status"); st != "200" {
					t.Fatalf("reading stream: status %q", st)
				}
				for _, id := range order[:nStalled] {
					if left[id] != 0 {
						t.Fatalf("stream %d could not send its window's worth (%d bytes left)", id, left[id])
					}
				}
				if flowwin.Process.Left() == budget {
					t.Fatal("nothing lent: the connection's window was not credited ahead of the stalled handlers")
				}
				close(release)
				for i := range nStalled {
					select {
					case <-stalledDone:
					case <-time.After(10 * time.Second):
						t.Fatalf("%d of %d stalled handlers ended", i, nStalled)
					}
				}
				testenv.WaitFor(t, 10*time.Second, "the lent credit back in the budget", func() bool {
					return flowwin.Process.Left() == budget
				})
				return
			}
		case *http2.RSTStreamFrame, *http2.GoAwayFrame:
			t.Fatalf("server sent %v", f)
		}
	}
}
