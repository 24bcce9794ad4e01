package relay

import (
	"io"
	"net"
	"runtime"
	"testing"
	"time"
)

// TestRelayIdleSessionHeap: an idle relayed session costs the relay (and
// the two in-process clients measured with it) little heap: no copy
// buffers are held while neither side sends. Each session carries a byte
// both ways first, so its copy loops have run. The bound is generous (the
// four TLS conns per session, two at the relay and two in the clients,
// are most of it: about 60 KiB per session measured); with io.Copy's two
// 32 KiB buffers held by every idle session it was about 125 KiB.
func TestRelayIdleSessionHeap(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 200 relayed sessions")
	}
	const n = 200
	const bound = 96 << 10 // bytes of heap per idle session
	f := newFixture(t, func(c *Config) {
		c.BytesPerSecond = -1
		c.MaxSessionsPerNode = 2 * n
	})
	x := f.node("site-a", "x")
	y := f.node("site-b", "y")
	pingBothWays(t, relayedPairs(t, x, y, 1)) // warm up pools and caches

	before := heapInuse()
	pairs := relayedPairs(t, x, y, n)
	pingBothWays(t, pairs)
	after := heapInuse()
	per := (int64(after) - int64(before)) / n
	t.Logf("heap in use %d KiB -> %d KiB: %d bytes per idle relayed session (bound %d)",
		before>>10, after>>10, per, bound)
	if per > bound {
		t.Fatalf("%d bytes of heap per idle relayed session, want at most %d", per, bound)
	}
	runtime.KeepAlive(pairs)
}

// relayedPairs opens n relayed sessions from x to y.
func relayedPairs(t *testing.T, x, y *testNode, n int) [][2]net.Conn {
	t.Helper()
	pairs := make([][2]net.Conn, 0, n)
	for range n {
		xc, yc := relayedPair(t, x, y)
		pairs = append(pairs, [2]net.Conn{xc, yc})
	}
	return pairs
}

// pingBothWays sends one byte each way on every pair and reads it back, so
// every session's copy loops have moved data before it is measured.
func pingBothWays(t *testing.T, pairs [][2]net.Conn) {
	t.Helper()
	b := make([]byte, 1)
	for _, p := range pairs {
		for i, c := range p {
			if _, err := c.Write([]byte{'x'}); err != nil {
				t.Fatal(err)
			}
			o := p[1-i]
			o.SetReadDeadline(time.Now().Add(20 * time.Second))
			if _, err := io.ReadFull(o, b); err != nil {
				t.Fatal(err)
			}
			o.SetReadDeadline(time.Time{})
		}
	}
}

// heapInuse is the heap in use after two collections (the second frees
// what the first's finalizers released).
func heapInuse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}
