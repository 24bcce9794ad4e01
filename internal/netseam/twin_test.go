package netseam

import (
	"errors"
	"net"
	"syscall"
	"testing"
)

// TestListenTwinTakesAnotherPick: with any free port, a TCP port whose
// UDP twin another socket holds is set aside and another taken (a CI
// run's second dev demo failed so, when its relay still bound the twin
// itself: "relay: listen udp ...: address already in use"); with a fixed
// port the clash is the error, at once.
func TestListenTwinTakesAnotherPick(t *testing.T) {
	held, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	busy := held.LocalAddr().String()
	probe, err := net.Listen("tcp", busy)
	if err != nil {
		t.Skipf("TCP %s is taken too: %v", busy, err)
	}
	probe.Close()

	calls := 0
	listenTCP = func(network, addr string) (net.Listener, error) {
		calls++
		if calls == 1 {
			return net.Listen(network, busy) // the kernel's pick, with its UDP twin taken
		}
		return net.Listen(network, addr)
	}
	defer func() { listenTCP = net.Listen }()

	pc, ln, err := ListenTwin("127.0.0.1:0")
	if err != nil {
		t.Fatalf("any free port: %v", err)
	}
	defer ln.Close()
	defer pc.Close()
	if calls != 2 || ln.Addr().String() == busy || pc.LocalAddr().String() != ln.Addr().String() {
		t.Fatalf("after %d picks: TCP %s, UDP %s (the taken one %s)", calls, ln.Addr(), pc.LocalAddr(), busy)
	}

	calls = 0
	if _, _, err := ListenTwin(busy); !errors.Is(err, syscall.EADDRINUSE) || calls != 1 {
		t.Fatalf("fixed port whose UDP twin is taken: %v after %d picks; want address in use at once", err, calls)
	}
	// The TCP port it took is given back.
	if ln, err := net.Listen("tcp", busy); err != nil {
		t.Fatalf("TCP %s still held after the failed ListenTwin: %v", busy, err)
	} else {
		ln.Close()
	}
}
