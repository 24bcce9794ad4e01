//go:build linux

package relay

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"syscall"
	"testing"
	"time"
)

// TestRelayDisconnectsSlowControlReader: an agent that sends on its
// control connection but stops reading it (here: introductions whose
// answers, ~1 KB each, it never reads, through a small receive buffer)
// makes the relay's writes block; after WriteTimeout the relay closes
// that connection, counts slow_reader once, serves none of the frames it
// had already read, and goes on serving the other nodes. Nothing is
// queued for the slow agent beyond the sockets' buffers.
func TestRelayDisconnectsSlowControlReader(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.WriteTimeout = 200 * time.Millisecond })
	peer := f.node("site-b", "peer")
	// The peer's candidates make every introduction's answer large.
	var cands []string
	for i := range MaxCandidates {
		cands = append(cands, fmt.Sprintf("[1111:2222:3333:4444:5555:6666:7777:%x]:65535", 0x1000+i))
	}
	if err := peer.c.SetCandidates(cands); err != nil {
		t.Fatal(err)
	}
	src := source(t, f.ca, "site-a", "x")
	// A small receive buffer, set before connecting so that the window
	// the relay sees is small from the start.
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		return errors.Join(err, serr)
	}}
	raw, err := d.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	conn := tls.Client(raw, src.ClientConfig(AuthorizeRelay(f.td), ALPNControl))
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	if fr, err := ReadFrame(conn); err != nil || fr.Type != TypeHello {
		t.Fatalf("hello: %v %v", fr, err)
	}
	waitFor(t, "the peer's candidates at the relay", func() bool {
		f.srv.mu.Lock()
		defer f.srv.mu.Unlock()
		n := f.srv.nodes[peer.id]
		return n != nil && len(n.candidates) == MaxCandidates
	})
	// Ask without reading until a write fails (the relay closed the
	// connection) or the deadline passes: bounded either way.
	const maxAsks = 60000 // below the relay's nonce store (1<<16)
	sent := 0
	var werr error
	for ; sent < maxAsks; sent++ {
		if werr = WriteFrame(conn, TypeIntroduce, &Introduce{Nonce: newID(), Time: time.Now().UnixMilli(), Peer: peer.id}); werr != nil {
			break
		}
	}
	if werr == nil {
		t.Fatalf("%d introductions asked and none refused: the relay still reads them", sent)
	}
	waitFor(t, "slow_reader counted", func() bool { return f.metric(refused(ReasonSlowReader)) >= 1 })
	waitFor(t, "x forgotten", func() bool { return f.srv.ConnectedNodes() == 1 })
	if got := f.metric(refused(ReasonSlowReader)); got != 1 {
		t.Errorf("slow_reader counted %v times for one connection", got)
	}
	// Served: at most what was written before the relay gave up, not
	// what it had read and buffered after.
	served := f.metric("fogmesh_relay_introductions_total")
	if served >= float64(sent) {
		t.Errorf("%v of %d introductions served: frames read after the connection was closed were served", served, sent)
	}
	y := f.node("site-c", "y") // still serving
	if y.c.Hello().Node != y.id {
		t.Fatal(y.c.Hello())
	}
	t.Logf("the relay gave up on x after %d introductions asked, %v served (%v)", sent, served, werr)
}
