package relay

import (
	"net"
	"os"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestRelayUDPSocketBuffers: the socket ServeUDP serves gets receive and
// send buffers of UDPSocketBuffer (the kernel reports twice what was
// granted), capped by net.core.rmem_max/wmem_max unless the relay may
// force them (root), instead of the kernel default of about 208 KiB; and
// UDP_GRO, so a sender's GSO burst is read as one datagram.
func TestRelayUDPSocketBuffers(t *testing.T) {
	f := newFixture(t, nil)
	f.node("site-a", "x") // a served relay: ServeUDP has run by now
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- f.srv.ServeUDP(pc) }()
	t.Cleanup(func() { f.srv.Close(); <-done })

	for _, o := range []struct {
		opt    int
		sysctl string
	}{{syscall.SO_RCVBUF, "/proc/sys/net/core/rmem_max"}, {syscall.SO_SNDBUF, "/proc/sys/net/core/wmem_max"}} {
		want := UDPSocketBuffer
		if os.Geteuid() != 0 {
			if capped := sysctlInt(o.sysctl); capped > 0 {
				want = min(want, capped)
			}
		}
		waitFor(t, "socket buffer raised", func() bool { return sockoptInt(t, pc, o.opt) >= 2*want })
		t.Logf("option %d: %d bytes (asked %d, want at least %d)", o.opt, sockoptInt(t, pc, o.opt), UDPSocketBuffer, 2*want)
	}
	waitFor(t, "UDP_GRO on", func() bool { return sockopt(t, pc, unix.SOL_UDP, unix.UDP_GRO) == 1 })
}

func sockoptInt(t *testing.T, pc *net.UDPConn, opt int) int {
	return sockopt(t, pc, syscall.SOL_SOCKET, opt)
}

func sockopt(t *testing.T, pc *net.UDPConn, level, opt int) int {
	rc, err := pc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var gerr error
	rc.Control(func(fd uintptr) { v, gerr = syscall.GetsockoptInt(int(fd), level, opt) })
	if gerr != nil {
		t.Fatal(gerr)
	}
	return v
}
