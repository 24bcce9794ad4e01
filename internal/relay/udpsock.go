package relay

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/VictoriaMetrics/metrics"
)

// UDPSocketBuffer is the receive and send buffer the relay asks for on
// each UDP socket it serves. The kernel default (about 208 KiB) holds
// about 150 datagrams: less than one QUIC congestion window of a relayed
// flow, whose burst then overflows it and is dropped silently, and QUIC
// backs off. The kernel caps what a process may ask for at
// net.core.rmem_max / wmem_max; with CAP_NET_ADMIN (root) the relay
// forces the size past the cap (SO_RCVBUFFORCE), as quic-go does for its
// own sockets.
const UDPSocketBuffer = 4 << 20

// sizeUDPSocket raises pc's buffers to UDPSocketBuffer where it can and
// returns the receive buffer the kernel granted (0 when pc is not a UDP
// socket). The kernel reports twice the size asked for (its bookkeeping).
func sizeUDPSocket(pc net.PacketConn) (int, error) {
	uc, ok := pc.(*net.UDPConn)
	if !ok {
		return 0, nil
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("relay: udp socket: %w", err)
	}
	var errs []error
	for _, o := range []struct{ set, force int }{
		{syscall.SO_RCVBUF, syscall.SO_RCVBUFFORCE},
		{syscall.SO_SNDBUF, syscall.SO_SNDBUFFORCE},
	} {
		cerr := rc.Control(func(fd uintptr) {
			if got, err := syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, o.set); err == nil && got >= 2*UDPSocketBuffer {
				return
			}
			// The forced size first (root); else the capped one.
			if syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, o.force, UDPSocketBuffer) != nil {
				if err := syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, o.set, UDPSocketBuffer); err != nil {
					errs = append(errs, fmt.Errorf("relay: udp socket buffer: %w", err))
				}
			}
		})
		if cerr != nil {
			errs = append(errs, cerr)
		}
	}
	var got int
	rc.Control(func(fd uintptr) {
		got, _ = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF)
	})
	return got, errors.Join(errs...)
}

// sysctlInt reads an integer under /proc/sys (0 if it cannot).
func sysctlInt(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}

// udpSock is a socket ServeUDP serves: reads and writes by netip.AddrPort,
// which allocate nothing per datagram on a *net.UDPConn.
type udpSock struct {
	pc net.PacketConn
	uc *net.UDPConn // pc, when it is one

	// Batched writes (udpbatch.go), by ServeUDP's goroutine only.
	batching bool     // writes are queued until flush
	pending  []udpRun // queued datagrams, by address
	gsoBuf   []byte   // one GSO write
	oob      []byte   // its UDP_SEGMENT control message
	noGSO    bool     // the socket cannot: write one by one

	writes, sent *metrics.Counter // socket writes and the datagrams they sent (nil: not counted)
}

func newUDPSock(pc net.PacketConn) *udpSock {
	uc, _ := pc.(*net.UDPConn)
	return &udpSock{pc: pc, uc: uc}
}

// count records one socket write of n datagrams.
func (s *udpSock) count(n int) {
	if s.writes != nil {
		s.writes.Inc()
		s.sent.Add(n)
	}
}

func (s *udpSock) read(b []byte) (int, netip.AddrPort, error) {
	if s.uc != nil {
		n, ap, err := s.uc.ReadFromUDPAddrPort(b)
		return n, unmapAddrPort(ap), err
	}
	n, a, err := s.pc.ReadFrom(b)
	if err != nil {
		return n, netip.AddrPort{}, err
	}
	ua, ok := a.(*net.UDPAddr)
	if !ok {
		return n, netip.AddrPort{}, nil // not UDP: no valid source, dropped by the callers
	}
	return n, unmapAddrPort(ua.AddrPort()), nil
}

func (s *udpSock) write(b []byte, to netip.AddrPort) (int, error) {
	if s.batching {
		s.queue(b, to)
		return len(b), nil
	}
	s.count(1)
	if s.uc != nil {
		return s.uc.WriteToUDPAddrPort(b, to)
	}
	return s.pc.WriteTo(b, net.UDPAddrFromAddrPort(to))
}

func unmapAddrPort(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
