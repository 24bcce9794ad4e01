package workloadapi

import (
	"crypto/x509"
	"net"
	"os"
	"testing"
	"time"
)

// h2Hello is a client's HTTP/2 preface and an empty SETTINGS frame: a live
// connection that opens no stream.
const h2Hello = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"

// answered reports whether the server speaks on c (its SETTINGS frame)
// within d, and false if it closes c instead.
func answered(t *testing.T, c net.Conn, d time.Duration) bool {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	var b [9]byte
	n, err := c.Read(b[:])
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("server neither answered nor closed the connection")
	}
	return n > 0
}

// TestConnectionsPerUIDBounded: one uid cannot hold more than
// maxConnsPerUID connections (each up to maxStreams streams) and so grow
// the agent's memory without end; a closed connection frees its place.
func TestConnectionsPerUIDBounded(t *testing.T) {
	src := &fakeSource{byUID: map[int32][]SVID{}, bundles: map[string][]*x509.Certificate{}, ch: make(chan struct{})}
	addr, _ := startServer(t, src)
	path := addr[len("unix://"):]
	dial := func() net.Conn {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.Write([]byte(h2Hello))
		return c
	}
	held := make([]net.Conn, maxConnsPerUID)
	for i := range held {
		held[i] = dial()
		if !answered(t, held[i], 5*time.Second) {
			t.Fatalf("connection %d of uid %d refused, within the limit of %d", i+1, os.Getuid(), maxConnsPerUID)
		}
	}
	if answered(t, dial(), 5*time.Second) {
		t.Fatalf("connection %d of one uid served; want it closed (limit %d)", maxConnsPerUID+1, maxConnsPerUID)
	}
	held[0].Close()
	deadline := time.Now().Add(5 * time.Second)
	for !answered(t, dial(), 5*time.Second) {
		if time.Now().After(deadline) {
			t.Fatal("a closed connection's place was not freed")
		}
	}
}
