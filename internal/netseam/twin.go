package netseam

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"syscall"
)

// maxTwinAttempts bounds ListenTwin's tries to find a port free for both
// UDP and TCP when addr has port 0.
const maxTwinAttempts = 10

// listenTCP is net.Listen (tests take the first pick).
var listenTCP = net.Listen

// ListenTwin binds UDP and TCP on addr (a DNS server, a relay: one port
// for both). If addr's port is 0, it binds TCP to a free port first and
// then UDP to the same port, trying again with another port if that one
// is taken for UDP. TCP goes first because its ports are
// the busy ones: a UDP port picked first is often some TCP connection's
// local port on a machine with many of them (10 tries in a row failed so
// in a CI run), while few UDP sockets hold the port a TCP listen got.
func ListenTwin(addr string) (*net.UDPConn, net.Listener, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	// A TCP port whose UDP twin is taken stays bound until we are done,
	// so the kernel does not hand it out again on the next try.
	var taken []net.Listener
	defer func() {
		for _, ln := range taken {
			ln.Close()
		}
	}()
	for attempt := 1; ; attempt++ {
		ln, err := listenTCP("tcp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("listen tcp %s: %w", addr, err)
		}
		udpAddr := net.JoinHostPort(host, strconv.Itoa(ln.Addr().(*net.TCPAddr).Port))
		pc, err := net.ListenPacket("udp", udpAddr)
		if err == nil {
			return pc.(*net.UDPConn), ln, nil
		}
		taken = append(taken, ln)
		if port != "0" || attempt >= maxTwinAttempts || !errors.Is(err, syscall.EADDRINUSE) {
			return nil, nil, fmt.Errorf("listen udp %s (attempt %d): %w", udpAddr, attempt, err)
		}
	}
}
