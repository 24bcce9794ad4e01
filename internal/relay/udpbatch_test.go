package relay

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// TestUDPSockBatchWrites: datagrams queued during a batch reach each
// address whole and in their order, runs of one size to one address go out
// as one GSO write, and a datagram of another size, or to another
// address, starts its own run.
func TestUDPSockBatchWrites(t *testing.T) {
	listen := func() *net.UDPConn {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	src, dstA, dstB := listen(), listen(), listen()
	set := metrics.NewSet()
	sock := newUDPSock(src)
	sock.writes, sock.sent = set.NewCounter("writes"), set.NewCounter("sent")
	apA := dstA.LocalAddr().(*net.UDPAddr).AddrPort()
	apB := dstB.LocalAddr().(*net.UDPAddr).AddrPort()

	type dgram struct {
		to   netip.AddrPort
		size int
	}
	plan := []dgram{{apA, 1300}, {apA, 1300}, {apB, 50}, {apA, 1300}, {apA, 700}, {apA, 1300}, {apA, 1400}, {apB, 50}, {apB, 49}, {apB, 50}}
	for range 70 { // past udpMaxSegments
		plan = append(plan, dgram{apA, 1000})
	}
	sock.batching = true
	want := map[netip.AddrPort][][]byte{}
	for i, d := range plan {
		b := bytes.Repeat([]byte{byte(i)}, d.size)
		copy(b, fmt.Sprint(i))
		if n, err := sock.write(b, d.to); err != nil || n != len(b) {
			t.Fatalf("queue %d: %d, %v", i, n, err)
		}
		want[d.to] = append(want[d.to], b)
	}
	// Readers run before the flush, with large buffers: 80 datagrams at
	// once would overflow a default socket buffer.
	type got struct {
		ap    netip.AddrPort
		dgram [][]byte
		err   error
	}
	res := make(chan got, 2)
	for _, c := range []*net.UDPConn{dstA, dstB} {
		c.SetReadBuffer(4 << 20)
		ap := c.LocalAddr().(*net.UDPAddr).AddrPort()
		go func() {
			g := got{ap: ap}
			for range want[ap] {
				buf := make([]byte, 9000)
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				n, err := c.Read(buf)
				if err != nil {
					g.err = err
					break
				}
				g.dgram = append(g.dgram, buf[:n])
			}
			res <- g
		}()
	}
	sock.batching = false
	sock.flush()
	for range 2 {
		g := <-res
		if g.err != nil {
			t.Fatalf("%s: after %d datagrams: %v", g.ap, len(g.dgram), g.err)
		}
		for i, w := range want[g.ap] {
			if d := g.dgram[i]; !bytes.Equal(d, w) {
				t.Fatalf("%s: datagram %d is %d bytes starting %q, want %d starting %q", g.ap, i, len(d), d[:min(len(d), 3)], len(w), w[:3])
			}
		}
	}
	writes, sent := set.GetOrCreateCounter("writes").Get(), set.GetOrCreateCounter("sent").Get()
	t.Logf("%d datagrams in %d socket writes", sent, writes)
	if sent != uint64(len(plan)) {
		t.Fatalf("counted %d datagrams sent, want %d", sent, len(plan))
	}
	// A: [1300 1300 1300 700] [1300] [1400 1000] [1000 ×64] [1000 ×5]
	// (a shorter datagram ends a run); B: [50 50 49] [50].
	if writes != 7 {
		t.Fatalf("%d socket writes, want 7", writes)
	}
}
