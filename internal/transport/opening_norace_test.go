//go:build !race

package transport

import (
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

// One yamux session could open any number of streams at once: each 12-byte
// SYN cost the server a yamux stream, a streamConn and a serveStream
// goroutine for HeaderTimeout (20,000 SYNs: 20,000 goroutines and 64 MiB).
// Now at most maxOpening wait for their header; the peer's further opens
// fill yamux's backlog and block. (Not under -race: the race detector
// allows 8128 goroutines.)
func TestSessionStreamsAwaitingHeaderBounded(t *testing.T) {
	srv := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{}, func(c *ServerConfig) {
		c.HeaderTimeout = 30 * time.Second // the default 5 s is plenty in production; longer keeps the test steady
	})
	raw, err := net.Dial("tcp", srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	sess, err := yamux.Client(raw, yamuxConfig(DefaultStreamWindow))
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	defer raw.Close()

	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	g0 := runtime.NumGoroutine()

	const n = 20000
	opened := make(chan error, 1)
	go func() {
		for range n {
			if _, err := sess.OpenStream(); err != nil { // a SYN; no header, ever
				opened <- err
				return
			}
		}
		opened <- nil
	}()
	// Wait until the server serves all n, or its count settles (a server
	// that bounds them stops short and blocks the opener).
	deadline := time.Now().Add(5 * time.Second)
	last, still := int64(-1), 0
	for srv.ActiveStreams() < n && still < 30 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // poll interval, bounded by the deadline
		if got := srv.ActiveStreams(); got == last {
			still++
		} else {
			last, still = got, 0
		}
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	t.Logf("%d header-less streams (%d KiB of SYNs): server active streams %d, goroutines +%d, heap +%d MiB",
		n, n*12>>10, srv.ActiveStreams(), runtime.NumGoroutine()-g0, (int64(after.HeapInuse)-int64(before.HeapInuse))>>20)
	if got := srv.ActiveStreams(); got > maxOpening {
		t.Errorf("one yamux session holds %d streams awaiting their header on the server, want at most %d", got, maxOpening)
	}
}
