package httpproxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// TestRawIO: RawIO reads and writes as net.Conn does: bytes both ways, a
// write larger than the socket buffers (it parks until the peer reads),
// EOF, deadlines, a reset and a closed connection.
func TestRawIO(t *testing.T) {
	c, peer := tcpPair(t)
	r := NewRawIO(c)
	if r == nil {
		t.Fatal("no RawIO for a TCP connection")
	}
	if NewRawIO(struct{ net.Conn }{c}) != nil {
		t.Fatal("a RawIO for a connection without SyscallConn")
	}

	// Both ways; a read parks until bytes come.
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, 16)
		n, err := peer.Read(buf)
		if err == nil && string(buf[:n]) != "ping" {
			err = errors.New("peer read " + string(buf[:n]))
		}
		if err == nil {
			_, err = peer.Write([]byte("pong"))
		}
		done <- err
	}()
	if n, err := r.Write([]byte("ping")); n != 4 || err != nil {
		t.Fatal(n, err)
	}
	buf := make([]byte, 16)
	if n, err := r.Read(buf); err != nil || string(buf[:n]) != "pong" {
		t.Fatalf("read %q %v", buf[:n], err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	// A write of 8 MiB does not fit the socket buffers: it parks until the
	// peer has read enough, and all of it arrives in order.
	big := bytes.Repeat([]byte("0123456789abcdef"), 8<<20/16)
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(peer, int64(len(big))))
		got <- b
	}()
	if n, err := r.Write(big); n != len(big) || err != nil {
		t.Fatal(n, err)
	}
	if b := <-got; !bytes.Equal(b, big) {
		t.Fatalf("the peer read %d bytes, not the %d written", len(b), len(big))
	}

	// A read deadline ends a parked read; cleared, reads work again.
	c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := r.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) || !IsTimeout(err) {
		t.Fatalf("read past the deadline: %v", err)
	}
	c.SetReadDeadline(time.Time{})

	// The peer's FIN: EOF once the bytes before it are read.
	peer.Write([]byte("last"))
	peer.CloseWrite()
	if b, err := io.ReadAll(readerOnly{r}); err != nil || string(b) != "last" {
		t.Fatalf("read to EOF: %q %v", b, err)
	}

	// A reset: the write that draws it or the one after fails.
	peer.SetLinger(0)
	peer.Close()
	var err error
	for i := 0; i < 10 && err == nil; i++ {
		_, err = r.Write([]byte("x"))
	}
	var ne net.Error
	if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) || !errors.As(err, &ne) {
		t.Fatalf("write after a reset: %v", err)
	}

	c.Close()
	if _, err := r.Read(buf); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read of a closed connection: %v", err)
	}
	if _, err := r.Write(buf); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write to a closed connection: %v", err)
	}
}

// readerOnly hides everything of an io.Reader but Read.
type readerOnly struct{ io.Reader }

// TestRawIOWriteDeadline: a write parked on a full socket ends at its
// deadline.
func TestRawIOWriteDeadline(t *testing.T) {
	c, _ := tcpPair(t) // the peer reads nothing
	r := NewRawIO(c)
	big := make([]byte, 64<<20)
	c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	n, err := r.Write(big)
	if !errors.Is(err, os.ErrDeadlineExceeded) || n == len(big) {
		t.Fatalf("write past the deadline: %d of %d bytes, %v", n, len(big), err)
	}
}

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t testing.TB) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// TestRawTCP: a TCP connection comes back reading and writing through its
// RawIO, deadlines and CloseWrite still its own; anything else comes back
// as it is.
func TestRawTCP(t *testing.T) {
	c, peer := tcpPair(t)
	other := struct{ net.Conn }{c}
	if got := RawTCP(other); got != net.Conn(other) {
		t.Fatalf("RawTCP wrapped a connection that is not TCP: %T", got)
	}
	rc := RawTCP(c)
	if _, ok := rc.(*rawTCPConn); !ok {
		t.Fatalf("RawTCP(TCP) = %T", rc)
	}
	if _, err := peer.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 8)
	if n, err := rc.Read(buf); err != nil || string(buf[:n]) != "ping" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
	rc.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := rc.Read(buf); !IsTimeout(err) {
		t.Fatalf("read past the deadline: %v, want a timeout", err)
	}
	rc.SetReadDeadline(time.Time{})
	if _, err := rc.Write([]byte("pong")); err != nil {
		t.Fatal(err)
	}
	if err := rc.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(peer)
	if err != nil || string(got) != "pong" {
		t.Fatalf("peer read %q, %v; want pong then EOF", got, err)
	}
}

// BenchmarkSyscallCost: what a system call costs on this machine, the floor
// under every read and write of the HTTP/1.1 path (bench/h1prof.sh runs it
// beside its profiles). getpid is the bare entry and exit; emptyRead is the
// read that finds a socket empty (EAGAIN), which a Go proxy makes about
// twice per request before it parks (RawIO, as net.Conn) and nginx does
// not make (it reads when epoll says readable); a one-byte write and read
// is the smallest exchange over loopback TCP.
func BenchmarkSyscallCost(b *testing.B) {
	b.Run("getpid", func(b *testing.B) {
		for b.Loop() {
			syscall.Getpid()
		}
	})
	c, s := tcpPair(b)
	rc, err := s.SyscallConn()
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, BufSize)
	b.Run("emptyRead", func(b *testing.B) {
		var rerr error
		if err := rc.Control(func(fd uintptr) {
			for b.Loop() {
				if _, rerr = syscall.Read(int(fd), buf); rerr != syscall.EAGAIN {
					return
				}
			}
			rerr = nil
		}); err != nil {
			b.Fatal(err)
		}
		if rerr != nil {
			b.Fatalf("read of an empty socket: %v, want EAGAIN", rerr)
		}
	})
	b.Run("writeRead1", func(b *testing.B) {
		for b.Loop() {
			if _, err := c.Write(buf[:1]); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(s, buf[:1]); err != nil {
				b.Fatal(err)
			}
		}
	})
}
