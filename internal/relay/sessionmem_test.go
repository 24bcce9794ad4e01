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
	// Two goroutines per session, blocked in reads: small stacks (8 KiB
	// measured, 16.5 under -race), unless one is the dialer's, grown in its
	// TLS handshake (20 KiB measured, 25 under -race).
	stackBound := int64(14 << 10)
	if raceEnabled {
		stackBound = 20 << 10
	}
	f := newFixture(t, func(c *Config) {
		c.BytesPerSecond = -1
		c.MaxSessionsPerNode = 2 * n
		c.MaxSessionsPerPair = 2 * n
	})
	x := f.node("site-a", "x")
	y := f.node("site-b", "y")
	pingBothWays(t, relayedPairs(t, x, y, 1)) // warm up pools and caches

	before := memInuse()
	pairs := relayedPairs(t, x, y, n)
	pingBothWays(t, pairs)
	after := memInuse()
	per := (int64(after.HeapInuse) - int64(before.HeapInuse)) / n
	stack := (int64(after.StackInuse) - int64(before.StackInuse)) / n
	t.Logf("heap in use %d KiB -> %d KiB: %d bytes per idle relayed session (bound %d); stacks %d bytes per session (bound %d)",
		before.HeapInuse>>10, after.HeapInuse>>10, per, bound, stack, stackBound)
	if per > bound {
		t.Errorf("%d bytes of heap per idle relayed session, want at most %d", per, bound)
	}
	if stack > stackBound {
		t.Errorf("%d bytes of goroutine stacks per idle relayed session, want at most %d", stack, stackBound)
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

// memInuse is the memory statistics after two collections (the second
// frees what the first's finalizers released).
func memInuse() runtime.MemStats {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m
}
