package paths

import (
	"context"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/h2up"
	"github.com/fogmesh/fogmesh/internal/httpproxy"
)

// startH2C serves HTTP/2 with prior knowledge (h2c) on loopback: "/"
// answers "ok"; "/stream" is a gRPC-like server stream that sends
// "first", then "last" and the trailer Grpc-Status 0 once release is
// closed.
func startH2C(t *testing.T, release <-chan struct{}) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/stream" {
			io.WriteString(w, "ok")
			return
		}
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Trailer", "Grpc-Status")
		io.WriteString(w, "first\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "last\n")
		w.Header().Set("Grpc-Status", "0")
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// TestH2LeavesRetiredPath: an HTTP/2 client (the agent's h2c and gRPC
// upstream transport: net/http's, dialing mesh streams through
// httpproxy.DrainOnRetire as the agent does) holds a long server stream on
// the relayed path when the path is upgraded to a punched one. Its next
// requests take the punched path on a new connection (before, they stayed
// on the relayed connection as long as it was busy), none fails, the long
// stream ends normally on the relayed path, and the relayed session then
// closes.
func TestH2LeavesRetiredPath(t *testing.T) {
	t.Run("net/http", func(t *testing.T) {
		testH2LeavesRetiredPath(t, func(dial func(context.Context) (net.Conn, error)) (http.RoundTripper, func()) {
			var protos http.Protocols
			protos.SetUnencryptedHTTP2(true)
			tr := &http.Transport{Protocols: &protos}
			tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
				c, err := dial(ctx)
				if err != nil {
					return nil, err
				}
				return httpproxy.DrainOnRetire(c, tr.CloseIdleConnections), nil
			}
			return tr, tr.CloseIdleConnections
		})
	})
	// The agent's own HTTP/2 upstream client, wired as in agent/l7.go.
	t.Run("h2up", func(t *testing.T) {
		testH2LeavesRetiredPath(t, func(dial func(context.Context) (net.Conn, error)) (http.RoundTripper, func()) {
			var pool *h2up.Pool
			pool = h2up.New(h2up.Config{Dial: func(ctx context.Context) (net.Conn, error) {
				c, err := dial(ctx)
				if err != nil {
					return nil, err
				}
				return httpproxy.DrainOnRetire(c, pool.CloseIdleConnections), nil
			}})
			return pool, pool.Close
		})
	})
}

// testH2LeavesRetiredPath runs the test with an HTTP/2 client made by
// newClient around a dial of mesh streams.
func testH2LeavesRetiredPath(t *testing.T, newClient func(dial func(context.Context) (net.Conn, error)) (http.RoundTripper, func())) {
	release := make(chan struct{})
	l := newLab(t)
	l.h2 = startH2C(t, release)
	punching := func(c *Config) { c.UDPAddr = "127.0.0.1:0" }
	a := l.node("site-a", "a", punching)
	b := l.node("site-b", "b", punching)
	waitRelay(t, true, a, b)
	pb := b.peer()
	pb.Addr = closedAddr(t)
	// Hold a's punching until the long stream runs on the relayed path
	// (a punch done before would carry the stream from the start).
	a.m.mu.Lock()
	udp := a.m.udp
	a.m.udp = nil
	a.m.mu.Unlock()

	var tcpDials, udpDials atomic.Int64
	tr, closeClient := newClient(func(ctx context.Context) (net.Conn, error) {
		c, err := a.m.Dial(ctx, pb, header("h2"))
		if err != nil {
			return nil, err
		}
		if c.RemoteAddr().Network() == "udp" {
			udpDials.Add(1)
		} else {
			tcpDials.Add(1)
		}
		return c, nil
	})
	defer closeClient()
	client := &http.Client{Transport: tr, Timeout: 20 * time.Second}
	get := func(what string) {
		t.Helper()
		resp, err := client.Get("http://h2.test/")
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || string(b) != "ok" || resp.ProtoMajor != 2 {
			t.Fatalf("%s: %s %d %q %v", what, resp.Proto, resp.StatusCode, b, err)
		}
	}

	// The long stream, on the first (relayed) connection.
	resp, err := client.Get("http://h2.test/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	first := make([]byte, len("first\n"))
	if _, err := io.ReadFull(resp.Body, first); err != nil || string(first) != "first\n" {
		t.Fatalf("stream: %q %v", first, err)
	}
	if tcpDials.Load() != 1 || udpDials.Load() != 0 {
		t.Fatalf("dials: %d tcp, %d udp; want the relayed one", tcpDials.Load(), udpDials.Load())
	}
	get("a request beside the stream, relayed")
	a.m.mu.Lock()
	a.m.udp = udp
	a.m.mu.Unlock()
	a.m.maybePunch(a.m.state(pb))
	waitFor(t, "a punched path to b", func() bool { p, _ := pathTo(a.m, "b"); return p.Kind == Punched })

	// New requests move to a connection over the punched path; every one
	// works, including those sent before the client read the drain.
	deadline := time.Now().Add(10 * time.Second)
	for n := 0; udpDials.Load() == 0; n++ {
		if time.Now().After(deadline) {
			t.Fatalf("after %d requests in 10 s, none took the punched path: the HTTP/2 connection stays on the relayed one", n)
		}
		get("a request during the upgrade")
	}
	for range 10 {
		get("a request after the upgrade")
	}
	if tcpDials.Load() != 1 || udpDials.Load() != 1 {
		t.Fatalf("dials: %d tcp, %d udp; want 1 and 1", tcpDials.Load(), udpDials.Load())
	}

	// The stream on the relayed path ends normally.
	close(release)
	rest, err := io.ReadAll(resp.Body)
	if err != nil || string(rest) != "last\n" {
		t.Fatalf("the rest of the stream: %q %v", rest, err)
	}
	if g := resp.Trailer.Get("Grpc-Status"); g != "0" {
		t.Fatalf("trailer Grpc-Status %q", g)
	}
	// Its connection closes with it, and so does the retired session.
	waitFor(t, "the retired relayed session closed", func() bool { return gaugeValue(b.srvSet, meshSessionsIn) == 0 })
	get("a request after the relayed session closed")
}
