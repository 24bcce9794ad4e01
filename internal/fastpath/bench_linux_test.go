package fastpath

import (
	"context"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/proxy"
)

// BenchmarkPath compares, in one run, a client talking to an echo server
// directly, through the agent's userspace relay (proxy.RelayIdle: splice),
// and through the kernel fast path: pingpong is the round trip of a 64-byte
// message (ns/op), bulk a 1 MiB write echoed back (MB/s counts one way).
func BenchmarkPath(b *testing.B) {
	if testing.Short() {
		b.Skip("short")
	}
	f := openForBench(b)
	ep := echoServerB(b)
	for _, mode := range []string{"direct", "agent", "kernel"} {
		for _, load := range []struct {
			name string
			size int
		}{{"pingpong", 64}, {"bulk", 1 << 20}} {
			b.Run(mode+"/"+load.name, func(b *testing.B) {
				c := dialPath(b, f, ep, mode)
				buf := make([]byte, load.size)
				got := make([]byte, load.size)
				b.SetBytes(int64(load.size))
				b.ResetTimer()
				for range b.N {
					if load.size <= 4096 { // fits the socket buffers: no writer goroutine
						if _, err := c.Write(buf); err != nil {
							b.Fatal(err)
						}
						if _, err := io.ReadFull(c, got); err != nil {
							b.Fatal(err)
						}
						continue
					}
					errc := make(chan error, 1)
					go func() { _, err := c.Write(buf); errc <- err }()
					if _, err := io.ReadFull(c, got); err != nil {
						b.Fatal(err)
					}
					if err := <-errc; err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

func openForBench(b *testing.B) *FastPath {
	f, err := Open("", b.TempDir())
	if err != nil {
		b.Skipf("fastpath: %v (needs root)", err)
	}
	b.Cleanup(func() { f.Close() })
	return f
}

func echoServerB(b *testing.B) string {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	return ln.Addr().String()
}

// BenchmarkOneWay: a client streams 128 KiB writes to a sink that reads
// and discards them (as iperf3 does, once the sink said it is ready), directly, through the agent's
// userspace relay and through the kernel path. kernel-% is the share of
// the bytes the kernel sent past the agent: what falls back to the agent
// when the queue bound trips.
func BenchmarkOneWay(b *testing.B) {
	if testing.Short() {
		b.Skip("short")
	}
	f := openForBench(b)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	sunk := make(chan int64, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.Write([]byte{1})           // ready: as iperf3, stream once the path is up
				buf := make([]byte, 128<<10) // iperf3's read size (io.Discard reads 8 KiB)
				var n int64
				for {
					m, err := c.Read(buf)
					n += int64(m)
					if err != nil {
						break
					}
				}
				sunk <- n
			}()
		}
	}()
	for _, mode := range []string{"direct", "agent", "kernel"} {
		b.Run(mode, func(b *testing.B) {
			c, result := dialPathResult(b, f, ln.Addr().String(), mode)
			buf := make([]byte, 128<<10)
			if _, err := io.ReadFull(c, buf[:1]); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(buf)))
			b.ResetTimer()
			for range b.N {
				if _, err := c.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			c.(*net.TCPConn).CloseWrite()
			if n := <-sunk; n != int64(b.N)*int64(len(buf)) {
				b.Fatalf("sink read %d bytes, want %d", n, b.N*len(buf))
			}
			b.StopTimer()
			c.Close()
			if r := result(); r.ClientToUp+r.KernelClientToUp > 0 {
				b.ReportMetric(100*float64(r.KernelClientToUp)/float64(r.ClientToUp+r.KernelClientToUp), "kernel-%")
			}
		})
	}
}

// dialPath returns a client connection to the echo server at ep: direct,
// or through a relay of the given mode.
func dialPath(b *testing.B, f *FastPath, ep, mode string) net.Conn {
	c, _ := dialPathResult(b, f, ep, mode)
	return c
}

// dialPathResult is dialPath, and a function that waits for the relay's
// end and returns its result (zero for the direct path and the agent's).
func dialPathResult(b *testing.B, f *FastPath, ep, mode string) (net.Conn, func() Result) {
	if mode == "direct" {
		c, err := net.Dial("tcp4", ep)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		return c, func() Result { return Result{} }
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	if mode == "kernel" {
		f.AddListener(ln.Addr().(*net.TCPAddr).AddrPort())
	}
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	a1, err := ln.Accept()
	if err != nil {
		b.Fatal(err)
	}
	ap, err := netip.ParseAddrPort(ep)
	if err != nil {
		b.Fatal(err)
	}
	done := func() {}
	if mode == "kernel" {
		if done, err = f.PrepareEndpoint(ap); err != nil {
			b.Fatal(err)
		}
	}
	a2, err := net.Dial("tcp4", ep)
	if err != nil {
		b.Fatal(err)
	}
	results := make(chan Result, 1)
	go func() {
		defer done()
		var r Result
		if mode == "kernel" {
			r, _ = f.Relay(context.Background(), a1.(*net.TCPConn), a2.(*net.TCPConn), 0, time.Minute)
		} else {
			proxy.RelayIdle(context.Background(), a1, a2, time.Minute)
		}
		results <- r
	}()
	return c, func() Result { return <-results }
}
