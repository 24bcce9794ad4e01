package netlab

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/testenv"
)

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testenv.WaitFor(t, 15*time.Second, what, cond)
}

// udpEcho answers every datagram with the sender's address ("ip:port"),
// so it serves both as an echo and as a reflector of the mapped address.
type udpEcho struct {
	pc  net.PacketConn
	got atomic.Int64
	wg  sync.WaitGroup
}

func startUDPEcho(t *testing.T, n Network, addr string) *udpEcho {
	t.Helper()
	pc, err := n.ListenPacket("udp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	e := &udpEcho{pc: pc}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		buf := make([]byte, 2048)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			e.got.Add(1)
			pc.WriteTo([]byte(from.String()), from)
		}
	}()
	t.Cleanup(func() { pc.Close(); e.wg.Wait() })
	return e
}

func (e *udpEcho) addr() string { return e.pc.LocalAddr().String() }

// tcpEcho copies every connection back to itself after writing the
// client's address and a newline.
type tcpEcho struct {
	ln       net.Listener
	accepted atomic.Int64
	wg       sync.WaitGroup
}

func startTCPEcho(t *testing.T, n Network, addr string) *tcpEcho {
	t.Helper()
	ln, err := n.Listen("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	e := &tcpEcho{ln: ln}
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			e.accepted.Add(1)
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			e.wg.Add(1)
			go func() {
				defer e.wg.Done()
				defer c.Close()
				c.Write([]byte(c.RemoteAddr().String() + "\n"))
				io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		e.wg.Wait()
	})
	return e
}

func (e *tcpEcho) addr() string { return e.ln.Addr().String() }

// roundTrip sends p on pc to addr and returns the first answer, resending
// every 500 ms (UDP may drop the first packet while ARP resolves).
func roundTrip(pc net.PacketConn, addr string, p []byte) ([]byte, error) {
	to, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, 2048)
	var last error
	for range 20 {
		if _, err := pc.WriteTo(p, to); err != nil {
			last = err
			time.Sleep(100 * time.Millisecond)
			continue
		}
		pc.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			last = err
			continue
		}
		if from.String() != to.String() {
			continue
		}
		return buf[:n], nil
	}
	return nil, last
}

func TestImpairUDPDelay(t *testing.T) {
	echo := startUDPEcho(t, HostNetwork, "127.0.0.1:0")
	const delay = 50 * time.Millisecond
	r, err := ImpairUDP(HostNetwork, "127.0.0.1:0", echo.addr(), Impairment{Delay: delay})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	for i := range 3 {
		start := time.Now()
		if _, err := roundTrip(pc, r.Addr().String(), []byte("ping")); err != nil {
			t.Fatal(err)
		}
		// Lower bound only: a busy machine may add any amount.
		if rtt := time.Since(start); rtt < 2*delay {
			t.Errorf("round trip %d took %v through a relay delaying %v each way; want ≥ %v", i, rtt, delay, 2*delay)
		}
	}
	// The last answer may reach the client before its count does.
	waitFor(t, "6 datagrams counted forwarded", func() bool { return r.Stats().Forwarded >= 6 })
	if s := r.Stats(); s.Dropped != 0 {
		t.Errorf("stats %+v, want 0 dropped", s)
	}
}

func TestImpairUDPLossAll(t *testing.T) {
	echo := startUDPEcho(t, HostNetwork, "127.0.0.1:0")
	r, err := ImpairUDP(HostNetwork, "127.0.0.1:0", echo.addr(), Impairment{Loss: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	c, err := net.Dial("udp4", r.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const n = 20
	for range n {
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the relay to count 20 drops", func() bool { return r.Stats().Dropped == n })
	if got := echo.got.Load(); got != 0 {
		t.Errorf("echo received %d datagrams through a relay losing all", got)
	}
}

func TestImpairLossFraction(t *testing.T) {
	r := newImpairer(HostNetwork, "", Impairment{Loss: 0.3, Seed: 42}, nil)
	lost := 0
	for range 10000 {
		if r.lose() {
			lost++
		}
	}
	if lost < 2500 || lost > 3500 {
		t.Errorf("lost %d of 10000 at loss 0.3", lost)
	}
}

func TestImpairValidate(t *testing.T) {
	for _, imp := range []Impairment{{Delay: -1}, {Loss: -0.1}, {Loss: 1.5}} {
		if _, err := ImpairUDP(HostNetwork, "127.0.0.1:0", "127.0.0.1:9", imp); err == nil {
			t.Errorf("ImpairUDP accepted %+v", imp)
		}
		if _, err := ImpairTCP(HostNetwork, "127.0.0.1:0", "127.0.0.1:9", imp); err == nil {
			t.Errorf("ImpairTCP accepted %+v", imp)
		}
	}
}

func TestImpairTCPDelayAndIntegrity(t *testing.T) {
	echo := startTCPEcho(t, HostNetwork, "127.0.0.1:0")
	const delay = 50 * time.Millisecond
	r, err := ImpairTCP(HostNetwork, "127.0.0.1:0", echo.addr(), Impairment{Delay: delay})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	start := time.Now()
	c, err := net.Dial("tcp4", r.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The echo's greeting travels one way; then a ping travels both.
	line := make([]byte, 0, 64)
	one := make([]byte, 1)
	for {
		if _, err := c.Read(one); err != nil {
			t.Fatal(err)
		}
		if one[0] == '\n' {
			break
		}
		line = append(line, one[0])
	}
	if d := time.Since(start); d < delay {
		t.Errorf("greeting arrived after %v through a relay delaying %v", d, delay)
	}
	start = time.Now()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "ping" {
		t.Fatalf("echo %q, %v", got, err)
	}
	if rtt := time.Since(start); rtt < 2*delay {
		t.Errorf("round trip %v through a relay delaying %v each way; want ≥ %v", rtt, delay, 2*delay)
	}

	// A megabyte comes back intact, and the end of the stream passes
	// through: the echo closes when it sees it.
	data := make([]byte, 1<<20)
	rand.Read(data)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		errc <- err
	}()
	back, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back, data) {
		t.Errorf("got %d bytes back, want the %d sent", len(back), len(data))
	}
}

func TestImpairTCPCloseEndsConnections(t *testing.T) {
	echo := startTCPEcho(t, HostNetwork, "127.0.0.1:0")
	r, err := ImpairTCP(HostNetwork, "127.0.0.1:0", echo.addr(), Impairment{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp4", r.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitFor(t, "the echo to accept", func() bool { return echo.accepted.Load() == 1 })
	r.Close() // waits for every goroutine
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("client connection still open after Close")
	}
	if _, err := net.Dial("tcp4", r.Addr().String()); err == nil {
		t.Error("relay still accepts after Close")
	}
}
