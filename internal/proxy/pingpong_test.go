package proxy

import (
	"context"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// The ping-pong benchmarks measure the round trip of one small message
// (the size of a small HTTP request) client -> [Relay] -> echo -> back, one
// connection, one message in flight: the per-hop latency of section 2 of
// BENCHMARKS.md in-process. ns/op is the round trip.
func BenchmarkPingPongDirect(b *testing.B) { benchPingPong(b, nil) }

// BenchmarkPingPongRelay goes through Relay on the bare *net.TCPConns.
func BenchmarkPingPongRelay(b *testing.B) {
	benchPingPong(b, func(a, c net.Conn) { Relay(context.Background(), a, c) })
}

// BenchmarkPingPongIdleWrapped is Relay with an idle timeout as the agent
// relayed before RelayIdle: on WithIdleTimeout's wrappers (a read deadline
// per read, a shared activity clock per byte, no splice).
func BenchmarkPingPongIdleWrapped(b *testing.B) {
	benchPingPong(b, func(a, c net.Conn) {
		wa, wc := WithIdleTimeout(a, c, time.Minute)
		Relay(context.Background(), wa, wc)
	})
}

// BenchmarkPingPongIdleWatch is RelayIdle on the bare *net.TCPConns (splice,
// the kernel's idle times read about once a minute).
func BenchmarkPingPongIdleWatch(b *testing.B) {
	benchPingPong(b, func(a, c net.Conn) { RelayIdle(context.Background(), a, c, time.Minute) })
}

// BenchmarkPingPongSplice is the splice relay of bench/splicerelay: two
// io.Copy between the *net.TCPConns (splice(2) for every message).
func BenchmarkPingPongSplice(b *testing.B) {
	benchPingPong(b, func(a, c net.Conn) {
		done := make(chan struct{})
		go func() { io.Copy(c, a); c.(*net.TCPConn).CloseWrite(); close(done) }()
		io.Copy(a, c)
		a.(*net.TCPConn).CloseWrite()
		<-done
		a.Close()
		c.Close()
	})
}

func benchPingPong(b *testing.B, relay func(a, c net.Conn)) {
	const size = 100
	echoLn := listen(b)
	go func() {
		c, err := echoLn.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				if _, werr := c.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	echoAddr := echoLn.Addr().String()
	addr := echoAddr
	if relay != nil {
		frontLn := listen(b)
		go func() {
			a, err := frontLn.Accept()
			if err != nil {
				return
			}
			c, err := net.Dial("tcp", echoAddr)
			if err != nil {
				a.Close()
				return
			}
			relay(a, c)
		}()
		addr = frontLn.Addr().String()
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	msg := make([]byte, size)
	got := make([]byte, size)
	cpu0 := processCPU()
	for b.Loop() {
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, got); err != nil {
			b.Fatal(err)
		}
	}
	// CPU time of the whole process (client, relay, echo) per round trip:
	// steadier than ns/op on a shared machine, where waiting for a core
	// dominates the wall time.
	b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N), "cpu-ns/op")
}

// processCPU is the process's user and system CPU time so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// plainConn hides ReadFrom and WriteTo, so io.Copy reads and writes
// through a buffer (no splice).
type plainConn struct{ net.Conn }

func (c plainConn) CloseWrite() error { return c.Conn.(*net.TCPConn).CloseWrite() }

// BenchmarkPingPongReadWrite is Relay on wrapped connections: read(2) and
// write(2) through a buffer for every message.
func BenchmarkPingPongReadWrite(b *testing.B) {
	benchPingPong(b, func(a, c net.Conn) { Relay(context.Background(), plainConn{a}, plainConn{c}) })
}
