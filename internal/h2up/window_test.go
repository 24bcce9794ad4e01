package h2up_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/fogmesh/fogmesh/internal/flowwin"
	"github.com/fogmesh/fogmesh/internal/h2up"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// TestUnreadResponseHoldsAtMostItsWindow: a response nobody reads (the
// agent's client stopped reading) holds at most the stream's initial
// receive window in the agent, 64 KiB. It was 4 MiB, then 1 MiB, and the
// agent's HTTP/2 server lets one client open 250 streams (1 GiB, then
// 250 MiB held for one client connection, measured through h2srv).
func TestUnreadResponseHoldsAtMostItsWindow(t *testing.T) {
	sent := make(chan int64, 1)
	pool, resp := getBig(t, 8<<20, sent, nil)
	var n int64
	select {
	case n = <-sent:
	case <-time.After(20 * time.Second):
		t.Fatal("the server never ran out of window")
	}
	testenv.WaitFor(t, 10*time.Second, "the bytes sent to arrive", func() bool {
		_, b := h2up.Buffered(pool)
		return int64(b) == n
	})
	if n > 64<<10 {
		t.Fatalf("a response nobody reads holds %d KiB in the agent, want at most 64", n>>10)
	}
	// Reading it lets the rest come.
	if got, err := io.Copy(io.Discard, resp.Body); err != nil || got != 8<<20 {
		t.Fatalf("read %d bytes, %v; want the 8 MiB", got, err)
	}
}

// getBig answers a GET with size bytes from serveUntilBlocked (blocked
// gets what it sent when the windows first stopped it) through a new
// pool, whose connections go through wrap if not nil (which gets the
// loopback dial). All is closed when the test ends.
func getBig(t *testing.T, size int64, blocked chan<- int64, wrap func(dial func(context.Context) (net.Conn, error)) func(context.Context) (net.Conn, error)) (*h2up.Pool, *http.Response) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go serveUntilBlocked(ln, size, blocked)
	dial := dialTo(ln.Addr().String())
	if wrap != nil {
		dial = wrap(dial)
	}
	pool := h2up.New(h2up.Config{Dial: dial})
	t.Cleanup(pool.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://x/big", nil)
	resp, err := pool.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return pool, resp
}

// serveUntilBlocked answers one request with size bytes, sending DATA only
// within the client's windows; the first time the windows let nothing more
// go it sends what it sent so far to blocked, then goes on as
// WINDOW_UPDATEs come.
func serveUntilBlocked(ln net.Listener, size int64, blocked chan<- int64) {
	c, err := ln.Accept()
	if err != nil {
		return
	}
	defer c.Close()
	fr, err := serverFramer(c)
	if err != nil {
		return
	}
	fr.WriteSettings()
	win := testenv.NewH2Windows()
	var id uint32
	var sent int64
	reported := false
	chunk := make([]byte, 16<<10)
	for {
		for id != 0 && sent < size && win.Room() > 0 {
			k := min(int64(len(chunk)), win.Room(), size-sent)
			fr.WriteData(id, sent+k == size, chunk[:k])
			sent += k
			win.Sent(k)
		}
		if id != 0 && sent < size && !reported {
			reported = true
			blocked <- sent
		}
		f, err := fr.ReadFrame()
		if err != nil {
			return
		}
		win.Take(f, fr)
		if f, ok := f.(*http2.MetaHeadersFrame); ok {
			id = f.StreamID
			var hb bytesBuffer
			hpack.NewEncoder(&hb).WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb, EndHeaders: true})
		}
	}
}

// TestWindowGrowsForAReaderThatKeepsUp: a response read as it comes
// grows its stream's window from 64 KiB to 1 MiB (the bulk rate a local
// endpoint needs: BenchmarkLargeResponse), and the growth goes back to
// the process's budget when the stream ends.
func TestWindowGrowsForAReaderThatKeepsUp(t *testing.T) {
	if got := readWithBudget(t, 1<<30); got != 1<<20 {
		t.Fatalf("the stream's window reached %d KiB, want 1024", got>>10)
	}
}

// TestWindowBudgetBoundsGrowth: the streams' growth together stays within
// the process's budget (a reader that read quickly and then stopped keeps
// its grown window; the budget bounds what all of them hold).
func TestWindowBudgetBoundsGrowth(t *testing.T) {
	// 64 KiB → 128 KiB takes 64 KiB of the budget; 256 KiB would take 128 more.
	if got := readWithBudget(t, 100<<10); got != 128<<10 {
		t.Fatalf("with 100 KiB of budget the stream's window reached %d KiB, want 128", got>>10)
	}
}

// readWithBudget reads half of a 16 MiB response as it comes, with the
// process's window budget set to budget, and returns the stream's receive
// window then; it reads the rest and checks that the budget is whole
// again once the stream has ended.
func readWithBudget(t *testing.T, budget int64) int64 {
	t.Helper()
	defer h2up.SetWindowBudget(budget)()
	const size = 16 << 20
	pool, resp := getBig(t, size, make(chan int64, 1), nil)
	if got, err := io.CopyN(io.Discard, resp.Body, size/2); err != nil {
		t.Fatalf("read %d bytes, %v", got, err)
	}
	// At most a window (1 MiB) past what was read has come: the stream is open.
	wins := h2up.StreamWindows(pool)
	if len(wins) != 1 {
		t.Fatalf("%d streams open halfway through the response, want 1", len(wins))
	}
	if got, err := io.Copy(io.Discard, resp.Body); err != nil || got != size/2 {
		t.Fatalf("read %d bytes of the second half, %v", got, err)
	}
	testenv.WaitFor(t, 10*time.Second, "the stream's growth to go back to the budget", func() bool {
		return flowwin.Process.Left() == budget
	})
	return wins[0]
}

// TestWindowBudgetBackAfterConnectionLoss: a stream whose window grew
// gives the growth back when its connection is lost mid-response, not
// only when it ends.
func TestWindowBudgetBackAfterConnectionLoss(t *testing.T) {
	const budget = 1 << 30
	defer h2up.SetWindowBudget(budget)()
	conns := make(chan net.Conn, 1)
	_, resp := getBig(t, 64<<20, make(chan int64, 1), func(dial func(context.Context) (net.Conn, error)) func(context.Context) (net.Conn, error) {
		return func(ctx context.Context) (net.Conn, error) {
			c, err := dial(ctx)
			if err == nil {
				conns <- c
			}
			return c, err
		}
	})
	if _, err := io.CopyN(io.Discard, resp.Body, 4<<20); err != nil {
		t.Fatal(err)
	}
	if flowwin.Process.Left() == budget {
		t.Fatal("the stream's window did not grow")
	}
	(<-conns).Close()
	if _, err := io.Copy(io.Discard, resp.Body); err == nil {
		t.Fatal("the body ended without an error after its connection was lost")
	}
	testenv.WaitFor(t, 10*time.Second, "the lost stream's growth to go back to the budget", func() bool {
		return flowwin.Process.Left() == budget
	})
}

// TestWindowBudgetHeldUntilBodyDone: a grown window's growth stays taken
// while the bytes it let in are buffered, also after the response has
// ended (END_STREAM read, the stream gone from its connection), and comes
// back when the body is read to its end.
func TestWindowBudgetHeldUntilBodyDone(t *testing.T) {
	const budget = 1 << 30
	defer h2up.SetWindowBudget(budget)()
	const size = 4 << 20
	pool, resp := getBig(t, size, make(chan int64, 1), nil)
	// The window is 1 MiB long before 3.5 MiB are read, and credit goes
	// back in quarters of it: the last 512 KiB and the end come.
	if _, err := io.CopyN(io.Discard, resp.Body, size-512<<10); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 10*time.Second, "the response's end", func() bool {
		return len(h2up.StreamWindows(pool)) == 0
	})
	if flowwin.Process.Left() == budget {
		t.Fatal("the growth came back while the bytes it let in are still buffered")
	}
	if got, err := io.Copy(io.Discard, resp.Body); err != nil || got != 512<<10 {
		t.Fatalf("read %d bytes of the last 512 KiB, %v", got, err)
	}
	if flowwin.Process.Left() != budget {
		t.Fatalf("budget %d after the body's end, want %d", flowwin.Process.Left(), budget)
	}
}
