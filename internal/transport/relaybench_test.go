package transport

import (
	"context"
	"net"
	"testing"

	"github.com/fogmesh/fogmesh/internal/proxy"
)

// BenchmarkTwoAgentRelay is the two-agent bulk path in one process, as
// iperf3 drives it through the agents: a TCP client writes 128 KiB chunks
// to a "source agent" socket, proxy.Relay copies them into a mesh stream
// (as the agent's TCP proxy does), the mesh server relays the stream to a
// TCP sink workload. Sub-benchmarks: plaintext mesh (a yamux stream),
// plaintext with a direct stream (its own TCP connection, spliced on both
// sides) and mTLS mesh.
func BenchmarkTwoAgentRelay(b *testing.B) {
	b.Run("plain", func(b *testing.B) { benchTwoAgentRelay(b, false, false) })
	b.Run("direct", func(b *testing.B) { benchTwoAgentRelay(b, false, true) })
	b.Run("mtls", func(b *testing.B) { benchTwoAgentRelay(b, true, false) })
}

func benchTwoAgentRelay(b *testing.B, mtls, direct bool) {
	const chunk = 128 << 10
	sink, sunk := startSink(b)
	d := mapDialer{"sink": sink}
	var srv *testServer
	var client *Client
	if mtls {
		ca := testCA(b, "", nil)
		srv = startTLSServer(b, testSource(testSVID(b, ca, "s", "node-b"), ca.Bundle()), d)
		client, _ = tlsClient(b, testSource(testSVID(b, ca, "s", "node-a"), ca.Bundle()), "node-a")
	} else {
		srv = startServer(b, listen(b, "127.0.0.1:0"), d, nil)
		if direct {
			client, _, _ = newDirectClient(b)
		} else {
			client, _ = newClient(b)
		}
	}

	// The source agent: one accepted connection relayed into one stream.
	ln := listen(b, "127.0.0.1:0")
	relayed := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			relayed <- err
			return
		}
		up, err := client.Dial(context.Background(), srv.addr, header("sink"))
		if err != nil {
			c.Close()
			relayed <- err
			return
		}
		_, _, err = proxy.Relay(context.Background(), c, up)
		relayed <- err
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()

	benchBulk(b, conn, chunk, sunk)
	conn.Close()
	if err := <-relayed; err != nil {
		b.Fatalf("relay: %v", err)
	}
}

// BenchmarkMeshDial is a short connection through the mesh port: Dial, one
// byte echoed, Close; on a yamux stream of the shared session, and on a
// direct stream (a TCP connection of its own: one more handshake).
func BenchmarkMeshDial(b *testing.B) {
	for _, direct := range []bool{false, true} {
		name := "session"
		if direct {
			name = "direct"
		}
		b.Run(name, func(b *testing.B) {
			srv := startServer(b, listen(b, "127.0.0.1:0"), mapDialer{"ep": serveWorkload(b, "127.0.0.1:0", echo)}, nil)
			var client *Client
			if direct {
				client, _, _ = newDirectClient(b)
			} else {
				client, _ = newClient(b)
			}
			buf := []byte{1}
			for b.Loop() {
				conn, err := client.Dial(context.Background(), srv.addr, header("ep"))
				if err != nil {
					b.Fatal(err)
				}
				if _, err := conn.Write(buf); err != nil {
					b.Fatal(err)
				}
				if _, err := conn.Read(buf); err != nil {
					b.Fatal(err)
				}
				conn.Close()
			}
		})
	}
}
