package transport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	rtmetrics "runtime/metrics"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/identity"
)

// relaySlack is what the path holds beyond the receiving end's stream
// window when its reader stalls: the mesh server's relay buffer (io.Copy,
// 32 KiB), rounded up. headerRoom is what the window already carried
// before the test writes (the stream header, the peer's status).
const (
	relaySlack = 64 << 10
	headerRoom = 4 << 10
)

// pattern returns n bytes of the test stream from offset off: byte i of the
// stream is i mod 251, so a lost, repeated or reordered chunk shows.
func pattern(off, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte((off + i) % 251)
	}
	return b
}

// fillUntilBlocked writes the test stream to c until a write makes no
// progress for half a second (a write deadline) after at least atLeast
// bytes went through, or until limit bytes are written, and returns the
// bytes written. A stall before atLeast (a busy machine) is retried, up to
// 20 s in all: a window smaller than atLeast fails the test there.
func fillUntilBlocked(t *testing.T, c net.Conn, atLeast, limit int) int {
	t.Helper()
	const chunk = 16 << 10
	deadline := time.Now().Add(20 * time.Second)
	written := 0
	for written < limit {
		c.SetWriteDeadline(time.Now().Add(500 * time.Millisecond))
		n, err := c.Write(pattern(written, chunk))
		written += n
		if err == nil {
			continue
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("write after %d bytes: %v, want a timeout", written, err)
		}
		if written >= atLeast {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("writes blocked after %d bytes, before the window of %d bytes was full", written, atLeast)
		}
	}
	c.SetWriteDeadline(time.Time{})
	return written
}

// readPattern reads n bytes of the test stream from c and checks them.
func readPattern(t *testing.T, c net.Conn, n int) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	got := make([]byte, n)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("reading back the %d bytes written: %v", n, err)
	}
	if !bytes.Equal(got, pattern(0, n)) {
		t.Fatalf("the %d bytes read back differ from those written", n)
	}
}

// TestStreamWindowBoundsBuffering: a reader that stalls makes the writer at
// the other end of a mesh stream block after the receiving side's stream
// window (StreamWindow, default DefaultStreamWindow) plus the relay's
// buffer: that is all an agent buffers for one stream, not the 16 MiB
// window it had before. Each side's own window applies (the server's for
// what the client sends, the client's for what the workload answers), and
// nothing written is lost once the reader resumes.
func TestStreamWindowBoundsBuffering(t *testing.T) {
	const limit = 64 << 20 // an unbounded (or 16 MiB) buffer takes far more than any window here
	for _, tc := range []struct {
		name        string
		server, cli int // StreamWindow of each end (0: default)
		toClient    bool
		window      int // the receiving end's window
	}{
		{name: "to server, default window", window: DefaultStreamWindow},
		{name: "to server, 256 KiB", server: MinStreamWindow, window: MinStreamWindow},
		{name: "to server, 2 MiB", server: 2 << 20, window: 2 << 20},
		{name: "to client, 512 KiB", cli: 512 << 10, server: MaxStreamWindow, toClient: true, window: 512 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := pipeDialer{peer: make(chan net.Conn, 1)}
			srv := startServer(t, listen(t, "127.0.0.1:0"), d, func(c *ServerConfig) { c.StreamWindow = tc.server })
			c := NewClient(ClientConfig{SourceNode: "node-a", StreamWindow: tc.cli})
			t.Cleanup(func() { c.Close() })
			conn, err := c.Dial(t.Context(), srv.addr, header("web-1"))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			work := <-d.peer
			defer work.Close()

			writer, reader := conn, work
			if tc.toClient {
				writer, reader = work, conn
			}
			written := fillUntilBlocked(t, writer, tc.window-headerRoom, limit)
			if written > tc.window+relaySlack {
				t.Fatalf("wrote %d bytes to a stalled reader; want at most its stream window %d plus %d",
					written, tc.window, relaySlack)
			}
			t.Logf("writer blocked after %d bytes (window %d)", written, tc.window)
			readPattern(t, reader, written)
		})
	}
}

// TestStreamWindowChecked: a window outside yamux's minimum and the cap is
// refused by the server, clamped by the client.
func TestStreamWindowChecked(t *testing.T) {
	for _, w := range []int{-1, MinStreamWindow - 1, MaxStreamWindow + 1} {
		_, err := NewServer(ServerConfig{Listener: listen(t, "127.0.0.1:0"), Dialer: mapDialer{}, StreamWindow: w})
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("stream window %d bytes", w)) {
			t.Errorf("StreamWindow %d: NewServer err = %v, want a stream window error", w, err)
		}
	}
	for w, want := range map[int]int{0: DefaultStreamWindow, 1: MinStreamWindow, 1 << 30: MaxStreamWindow, 3 << 20: 3 << 20} {
		cfg := ClientConfig{StreamWindow: w}
		cfg.validate()
		if cfg.StreamWindow != want {
			t.Errorf("client StreamWindow %d became %d, want %d", w, cfg.StreamWindow, want)
		}
	}
}

// BenchmarkMeshStreamWindow is BenchmarkMeshStreamTLS (one stream over the
// mTLS mesh port into a TCP sink workload, 32 KiB writes) for several
// stream windows on both ends: the throughput a smaller window costs on
// loopback, and the peak of live heap objects while it runs (sampled every
// 5 ms, less the heap before), which the receive buffers dominate. Run with
// -count to interleave the windows.
func BenchmarkMeshStreamWindow(b *testing.B) {
	for _, w := range []int{16 << 20, 4 << 20, 2 << 20, 1 << 20, 512 << 10, 256 << 10} {
		b.Run(fmt.Sprintf("window=%dKiB", w>>10), func(b *testing.B) {
			ca := testCA(b, "", nil)
			sink, sunk := startSink(b)
			srv := startServer(b, listen(b, "127.0.0.1:0"), mapDialer{"sink": sink},
				func(c *ServerConfig) {
					c.TLS = testSource(testSVID(b, ca, "s", "node-b"), ca.Bundle()).ServerConfig(identity.AuthorizeNode(), identity.ALPNMesh)
					c.StreamWindow = w
				})
			client := NewClient(ClientConfig{SourceNode: "node-a", StreamWindow: w,
				TLS: testSource(testSVID(b, ca, "s", "node-a"), ca.Bundle()).ClientConfig(identity.AuthorizeNode(), identity.ALPNMesh)})
			b.Cleanup(func() { client.Close() })
			conn, err := client.Dial(context.Background(), srv.addr, header("sink"))
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()

			runtime.GC()
			base := heapObjects()
			peak := base
			stop := make(chan struct{})
			sampled := make(chan struct{})
			go func() {
				defer close(sampled)
				tick := time.NewTicker(5 * time.Millisecond)
				defer tick.Stop()
				for {
					select {
					case <-stop:
						return
					case <-tick.C:
						peak = max(peak, heapObjects())
					}
				}
			}()
			benchBulk(b, conn, 32<<10, sunk)
			close(stop)
			<-sampled
			b.ReportMetric(float64(peak-base)/(1<<20), "MiB-heap-peak")
		})
	}
}

// heapObjects is the bytes of live and not yet swept heap objects.
func heapObjects() uint64 {
	s := []rtmetrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	rtmetrics.Read(s)
	return s[0].Value.Uint64()
}
