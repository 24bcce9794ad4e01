package transport

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/fogmesh/fogmesh/internal/testenv"
)

// Helpers the carriers' tests and benchmarks share (plaintext, mTLS, QUIC,
// the stream window, the two-agent relay): workloads (echo, hold, sink,
// upper), servers and clients, dialing and round trips, the bulk write
// loop of a benchmark, and the goroutine-leak wait.

// startSink starts a workload that reads each connection to its end and
// sends the bytes it read on the returned channel.
func startSink(t testing.TB) (addr string, sunk <-chan int64) {
	t.Helper()
	ch := make(chan int64, 1)
	return serveWorkload(t, "127.0.0.1:0", func(c net.Conn) {
		n, _ := io.Copy(io.Discard, c)
		ch <- n
	}), ch
}

// benchBulk writes chunk-byte buffers to conn for b.Loop, half-closes it
// and checks that the sink (startSink) read every byte written.
func benchBulk(b *testing.B, conn net.Conn, chunk int, sunk <-chan int64) {
	b.Helper()
	buf := make([]byte, chunk)
	var sent int64
	b.SetBytes(int64(chunk))
	for b.Loop() {
		n, err := conn.Write(buf)
		if err != nil {
			b.Fatal(err)
		}
		sent += int64(n)
	}
	if err := conn.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		b.Fatalf("CloseWrite: %v", err)
	}
	if got := <-sunk; got != sent {
		b.Fatalf("sink got %d bytes, want %d", got, sent)
	}
}

// stopServing closes a test server (what names it) and checks that its
// Serve, whose result arrives on served, returned nil; a second stop
// passes.
func stopServing(t testing.TB, what string, close func() error, served chan error) {
	t.Helper()
	if err := close(); err != nil {
		t.Errorf("%s.Close: %v", what, err)
	}
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
		served <- nil // let a second stop pass
	case <-time.After(5 * time.Second):
		t.Errorf("Serve did not return after Close")
	}
}

// waitGoroutines waits up to 5 s until no more goroutines run than before,
// and fails the test with every goroutine's stack if some remain.
func waitGoroutines(t *testing.T, before int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		after := runtime.NumGoroutine()
		if after <= before {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutines: %d before, %d after\n%s", before, after, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
}

// closeWithin closes c and fails the test with what if that takes longer
// than d, or with Close's error.
func closeWithin(t *testing.T, c io.Closer, d time.Duration, what string) {
	t.Helper()
	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(d):
		t.Fatal(what)
	}
}

// mapDialer is the test Dialer: endpoint name -> workload address. Any
// other endpoint is an unknown destination.
type mapDialer map[string]string

func (d mapDialer) DialLocal(ctx context.Context, h Header) (net.Conn, error) {
	addr, ok := d[h.Endpoint]
	if !ok {
		return nil, fmt.Errorf("endpoint %q: %w", h.Endpoint, ErrUnknownDestination)
	}
	if addr == "deny" {
		return nil, fmt.Errorf("source %s: %w", h.Source, ErrDenied)
	}
	var nd net.Dialer
	return nd.DialContext(ctx, "tcp", addr)
}

// countingListener counts accepted connections.
type countingListener struct {
	net.Listener
	accepted atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepted.Add(1)
	}
	return c, err
}

func listen(t testing.TB, addr string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// serveWorkload accepts on a fresh listener at addr and runs handle for each
// conn until the test ends. It returns the workload's address.
func serveWorkload(t testing.TB, addr string, handle func(net.Conn)) string {
	t.Helper()
	ln := listen(t, addr)
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return ln.Addr().String()
}

func echo(c net.Conn) { io.Copy(c, c) }

// serveHold runs a workload that reads until EOF and then keeps its conn
// open, never answering, until the test ends.
func serveHold(t testing.TB) string {
	done := make(chan struct{})
	addr := serveWorkload(t, "127.0.0.1:0", func(c net.Conn) {
		io.Copy(io.Discard, c)
		<-done
	})
	t.Cleanup(func() { close(done) }) // before serveWorkload's, which waits
	return addr
}

// deadPort returns an address nothing listens on.
func deadPort(t testing.TB, host string) string {
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

type testServer struct {
	*Server
	addr    string
	ln      *countingListener
	metrics *metrics.Set
	served  chan error
}

// startServer runs a Server on ln until the test ends.
func startServer(t testing.TB, ln net.Listener, d Dialer, tweak func(*ServerConfig)) *testServer {
	t.Helper()
	cl := &countingListener{Listener: ln}
	set := metrics.NewSet()
	cfg := ServerConfig{Listener: cl, Dialer: d, Metrics: set}
	if tweak != nil {
		tweak(&cfg)
	}
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{Server: s, addr: ln.Addr().String(), ln: cl, metrics: set, served: make(chan error, 1)}
	go func() { ts.served <- s.Serve(context.Background()) }()
	t.Cleanup(func() { ts.stop(t) })
	return ts
}

// stop closes the server and checks Serve returned nil.
func (ts *testServer) stop(t testing.TB) {
	t.Helper()
	stopServing(t, "Server", ts.Close, ts.served)
}

func newClient(t testing.TB) (*Client, *metrics.Set) {
	set := metrics.NewSet()
	c := NewClient(ClientConfig{SourceNode: "node-a", Metrics: set})
	t.Cleanup(func() { c.Close() })
	return c, set
}

func header(endpoint string) Header {
	return Header{Namespace: "default", Service: "web", Endpoint: endpoint, Port: "http"}
}

func roundTrip(t testing.TB, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read: %v", err)
	}
	if string(got) != msg {
		t.Fatalf("echo = %q, want %q", got, msg)
	}
}

func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	testenv.WaitFor(t, 5*time.Second, what, cond)
}

func metricsText(set *metrics.Set) string {
	var b bytes.Buffer
	set.WritePrometheus(&b)
	return b.String()
}

func wantMetric(t testing.TB, set *metrics.Set, line string) {
	t.Helper()
	if text := metricsText(set); !strings.Contains(text, line+"\n") {
		t.Errorf("metrics lack %q:\n%s", line, text)
	}
}

// meshClient is what the plaintext, mTLS and QUIC clients have in common.
type meshClient interface {
	Dial(ctx context.Context, meshAddr string, h Header) (net.Conn, error)
}

// dialRoundTrip dials endpoint at addr through c, checks that msg comes
// back (an echo workload) and closes the stream.
func dialRoundTrip(t testing.TB, c meshClient, addr, endpoint, msg string) {
	t.Helper()
	conn, err := c.Dial(t.Context(), addr, header(endpoint))
	if err != nil {
		t.Fatalf("dial %s at %s: %v", endpoint, addr, err)
	}
	defer conn.Close()
	roundTrip(t, conn, msg)
}

// upper is a workload that reads its request to EOF and answers it in
// upper case: what a half-close must carry.
func upper(c net.Conn) {
	req, _ := io.ReadAll(c)
	c.Write(bytes.ToUpper(req))
}

// wantHalfClose writes "shout" to conn (to an upper workload), half-closes
// it and checks that "SHOUT" still comes back.
func wantHalfClose(t testing.TB, conn net.Conn) {
	t.Helper()
	io.WriteString(conn, "shout")
	if err := conn.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(conn)
	if err != nil || string(got) != "SHOUT" {
		t.Fatalf("reply = %q, %v; want SHOUT", got, err)
	}
}
