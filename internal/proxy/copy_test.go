package proxy

import (
	"bytes"
	"context"
	"io"
	"net"
	"runtime"
	"testing"
	"time"
)

// halfConn is a net.Conn with CloseWrite and nothing else: no ReadFrom or
// WriteTo, so Relay cannot splice it and copies through lazyCopy, as for
// the relay's TLS legs.
type halfConn struct{ net.Conn }

func (c halfConn) CloseWrite() error { return c.Conn.(closeWriter).CloseWrite() }

func hideCopiers(c net.Conn) net.Conn { return halfConn{c} }

// TestRelayLazyMessageSizes: messages around the small buffer's size and
// far above it, with the relay idle between them, arrive intact, so every
// move between the small and the large buffer keeps the bytes in order.
func TestRelayLazyMessageSizes(t *testing.T) {
	c, res := startRelayWrap(t, t.Context(), hideCopiers, func(c net.Conn) { io.Copy(c, c) })
	sizes := []int{1, smallCopyBuf - 1, smallCopyBuf, smallCopyBuf + 1, 5, 3 * largeCopyBuf, 1, largeCopyBuf, 7 << 20, 2, largeCopyBuf + 1, 3}
	var total int64
	for i, n := range sizes {
		msg := make([]byte, n)
		for j := range msg {
			msg[j] = byte(i*31 + j)
		}
		sent := make(chan error, 1)
		go func() { _, err := c.Write(msg); sent <- err }()
		got := make([]byte, n)
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatalf("message %d (%d bytes): %v", i, n, err)
		}
		if err := <-sent; err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, msg) {
			t.Fatalf("message %d (%d bytes) came back changed", i, n)
		}
		total += int64(n)
	}
	c.Close()
	r := waitResult(t, res, 10*time.Second)
	if r.aToB != total || r.bToA != total {
		t.Fatalf("Relay counts %d, %d, want %d both", r.aToB, r.bToA, total)
	}
}

// TestRelayIdleHeap: an idle Relay between conns it cannot splice holds
// no large copy buffer, even after a burst: its heap is the small buffers,
// the conns and the bookkeeping. io.Copy held 32 KiB per direction for
// the Relay's life (64 KiB per pair, above the bound).
func TestRelayIdleHeap(t *testing.T) {
	const n = 200
	const bound = 24 << 10 // bytes of heap per idle Relay, the 4 TCP conns included
	burst := make([]byte, 256<<10)
	open := func(k int) []*net.TCPConn {
		cs := make([]*net.TCPConn, 0, k)
		for range k {
			c, _ := startRelayWrap(t, context.Background(), hideCopiers, func(c net.Conn) { io.Copy(c, c) })
			// A burst each way, then one byte: the copy loops have used
			// their large buffers and gone back to waiting.
			for _, msg := range [][]byte{burst, {1}} {
				go c.Write(msg)
				c.SetReadDeadline(time.Now().Add(20 * time.Second))
				if _, err := io.ReadFull(c, make([]byte, len(msg))); err != nil {
					t.Fatal(err)
				}
			}
			cs = append(cs, c)
		}
		return cs
	}
	open(1) // warm up pools and caches
	before := heapInuse()
	cs := open(n)
	after := heapInuse()
	per := (int64(after) - int64(before)) / n
	t.Logf("heap in use %d KiB -> %d KiB: %d bytes per idle Relay (bound %d)", before>>10, after>>10, per, bound)
	if per > bound {
		t.Fatalf("%d bytes of heap per idle Relay, want at most %d", per, bound)
	}
	runtime.KeepAlive(cs)
}

// heapInuse is the heap in use after two collections.
func heapInuse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}
