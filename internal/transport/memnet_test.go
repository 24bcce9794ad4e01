package transport

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/netseam/memnet"
)

// TestMTLSOverMemnet: the client dials through ClientConfig.Network, so a
// mesh session (mTLS, yamux) runs over an in-memory network with no mesh
// port; a reset of the peer's address fails the open stream, and the next
// Dial is refused like a dial to a closed TCP port.
func TestMTLSOverMemnet(t *testing.T) {
	var mem memnet.Network
	ln, err := mem.Listen(context.Background(), "tcp", "127.230.1.1:7072")
	if err != nil {
		t.Fatal(err)
	}
	ca := testCA(t, "", nil)
	work := serveWorkload(t, "127.0.0.1:0", echo) // the workload keeps a real socket
	srv, err := NewServer(ServerConfig{Listener: ln, Dialer: mapDialer{"web-1": work}, HeaderTimeout: 2 * time.Second,
		TLS: testSource(testSVID(t, ca, "s", "node-b"), ca.Bundle()).ServerConfig(identity.AuthorizeNode(), identity.ALPNMesh)})
	if err != nil {
		t.Fatal(err)
	}
	var serveErr error
	served := make(chan struct{})
	go func() { serveErr = srv.Serve(context.Background()); close(served) }()
	t.Cleanup(func() { srv.Close(); <-served })
	addr := ln.Addr().String()
	client := NewClient(ClientConfig{SourceNode: "node-a", DialTimeout: 2 * time.Second, Network: &mem,
		TLS: testSource(testSVID(t, ca, "s", "node-a"), ca.Bundle()).ClientConfig(identity.AuthorizeNode(), identity.ALPNMesh)})
	t.Cleanup(func() { client.Close() })

	conn, err := client.Dial(context.Background(), addr, header("web-1"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	roundTrip(t, conn, "hello over memnet")
	if n := mem.Conns(addr); n != 1 {
		t.Fatalf("memnet carries %d connections to the mesh address, want the session's 1", n)
	}

	mem.Reset(addr) // the peer's node goes away
	<-served
	if !errors.Is(serveErr, net.ErrClosed) {
		t.Fatalf("Serve after its listener was reset: %v, want the accept error", serveErr)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(conn, make([]byte, 1)); err == nil || errors.Is(err, io.EOF) || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read on a stream whose link was reset: %v, want a session error", err)
	}
	_, err = client.Dial(context.Background(), addr, header("web-1"))
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial after the peer went away: %v, want connection refused", err)
	}
}
