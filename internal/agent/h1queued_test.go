package agent

import (
	"bufio"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/httpproxy"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// TestBodyWaitsRestQueued: a Content-Length body whose rest is in the
// client's socket already does not go full duplex (BodyWaits false: its
// reads do not wait), for all of its reads; one whose rest is not all
// there does, and one whose rest is over queuedRestMax or over the
// upstream socket's room (SendRoom, unknown included); so does one on a
// connection with no socket of its own (no RawIO), as before.
func TestBodyWaitsRestQueued(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	raw := httpproxy.NewRawIO(server)
	cs := &h1ClientConn{conn: server, br: bufio.NewReader(server), wire: &h1Wire{c: server, raw: raw}}
	room := fixedRoom(1 << 20) // the upstream socket's room (SendRoom)
	queued := func(n int) {
		t.Helper()
		testenv.WaitFor(t, 5*time.Second, "the socket holding the client's bytes", func() bool { return raw.Queued() == n })
	}
	newBody := func(n int64) *httpproxy.TimedBody {
		tb := httpproxy.NewTimedBody(io.NopCloser(server), server.SetReadDeadline)
		cs.body, cs.bodyLen, cs.bodyQueued, cs.bodyAsked = tb, n, false, false // as forward sets and resets them
		return tb
	}

	if _, err := client.Write([]byte(strings.Repeat("a", 1000))); err != nil {
		t.Fatal(err)
	}
	queued(1000)
	tb := newBody(1000)
	for read := 0; read < 1000; read += 250 {
		if cs.BodyWaits(room) {
			t.Fatalf("all of the body in the socket, %d bytes read: BodyWaits true", read)
		}
		if _, err := io.ReadFull(tb, make([]byte, 250)); err != nil {
			t.Fatal(err)
		}
	}

	if _, err := client.Write([]byte(strings.Repeat("b", 400))); err != nil {
		t.Fatal(err)
	}
	queued(400)
	newBody(1000)
	if !cs.BodyWaits(room) {
		t.Fatal("400 of 1000 bytes in the socket: BodyWaits false")
	}

	if _, err := client.Write([]byte(strings.Repeat("c", queuedRestMax+1-400))); err != nil {
		t.Fatal(err)
	}
	queued(queuedRestMax + 1)
	newBody(queuedRestMax + 1)
	if !cs.BodyWaits(room) {
		t.Fatal("a rest over queuedRestMax, all in the socket: BodyWaits false")
	}

	if _, err := io.ReadFull(server, make([]byte, queuedRestMax+1)); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Write([]byte(strings.Repeat("d", 1000))); err != nil {
		t.Fatal(err)
	}
	queued(1000)
	newBody(1000)
	if !cs.BodyWaits(fixedRoom(999)) {
		t.Fatal("1000 bytes all in the socket, room for 999 upstream: BodyWaits false")
	}
	newBody(1000)
	if !cs.BodyWaits(fixedRoom(-1)) {
		t.Fatal("1000 bytes all in the socket, the upstream's room unknown: BodyWaits false")
	}
	newBody(1000)
	if cs.BodyWaits(fixedRoom(1000)) {
		t.Fatal("1000 bytes all in the socket, room for 1000 upstream: BodyWaits true")
	}
	// A retry's attempt on another connection (its first part replayed):
	// the rest, still in the socket, goes to a connection whose room was
	// not asked.
	if !cs.BodyWaits(fixedRoom(999)) {
		t.Fatal("the rest queued, another connection with room for 999: BodyWaits false (the first connection's answer kept)")
	}

	newBody(1000)
	cs.wire.raw = nil
	if !cs.BodyWaits(room) {
		t.Fatal("no RawIO: BodyWaits false")
	}
}

// fixedRoom is a SendRoomer with that much room.
type fixedRoom int

func (r fixedRoom) SendRoom() int { return int(r) }
