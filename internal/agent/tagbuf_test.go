package agent

import (
	"io"
	"net"
	"testing"
)

// countingConn counts the reads that reach the socket.
type countingConn struct {
	net.Conn
	reads int
}

func (c *countingConn) Read(p []byte) (int, error) { c.reads++; return c.Conn.Read(p) }

// TestTaggedConnBuffersHTTP2Reads: net/http's HTTP/2 server reads a
// frame's 9-byte header and then its payload, each with a read of its
// own; a client connection of an HTTP/2 port is read through a buffer, so
// two frames sent at once cost one read of the socket, not four.
func TestTaggedConnBuffersHTTP2Reads(t *testing.T) {
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
	frames := make([]byte, 9+4+9+4)
	if _, err := client.Write(frames); err != nil {
		t.Fatal(err)
	}
	cc := &countingConn{Conn: server}
	tc := &taggedConn{Conn: cc, buffered: true}
	for _, n := range []int{9, 4, 9, 4} {
		if _, err := io.ReadFull(tc, make([]byte, n)); err != nil {
			t.Fatal(err)
		}
	}
	if cc.reads > 2 { // one, or two if the bytes came in two segments
		t.Fatalf("%d reads of the socket for two frames sent at once", cc.reads)
	}
}
