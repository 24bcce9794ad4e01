package testenv

import (
	"errors"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"
)

// SilentConns are TCP connections that send nothing (a client that never
// starts, or dribbles, its TLS handshake), each with a reader that notes
// when the server closes it.
type SilentConns struct {
	Conns  []net.Conn
	closed []atomic.Bool
	n      atomic.Int32
}

// DialSilent opens n TCP connections to addr from the local IP address
// from (loopback takes all of 127.0.0.0/8, so 127.x.y.z addresses are
// distinct sources on one host) and sends nothing on them. They are
// closed when the test ends.
func DialSilent(t testing.TB, n int, from, addr string) *SilentConns {
	t.Helper()
	s := &SilentConns{closed: make([]atomic.Bool, n)}
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
	for i := range n {
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("silent connection %d from %s: %v", i, from, err)
		}
		s.Conns = append(s.Conns, c)
		go func() {
			var b [1]byte
			_, err := c.Read(b[:])
			// Closed by the server (EOF, reset), not by the test.
			if err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, os.ErrDeadlineExceeded) {
				s.closed[i].Store(true)
				s.n.Add(1)
			}
		}()
	}
	t.Cleanup(s.Close)
	return s
}

// ClosedByPeer returns how many of the connections the server closed.
func (s *SilentConns) ClosedByPeer() int { return int(s.n.Load()) }

// IsClosed reports whether the server closed connection i.
func (s *SilentConns) IsClosed(i int) bool { return s.closed[i].Load() }

// Close closes every connection.
func (s *SilentConns) Close() {
	for _, c := range s.Conns {
		c.Close()
	}
}
