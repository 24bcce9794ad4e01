package transport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/fogmesh/fogmesh/internal/testenv"
)

func TestEndToEnd(t *testing.T) {
	for _, tc := range []struct{ name, host string }{
		{"IPv4", "127.0.0.1"},
		{"IPv6", "::1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", net.JoinHostPort(tc.host, "0"))
			if err != nil {
				t.Skipf("no %s loopback: %v", tc.name, err)
			}
			t.Cleanup(func() { ln.Close() })
			d := mapDialer{
				"echo":   serveWorkload(t, net.JoinHostPort(tc.host, "0"), echo),
				"down":   deadPort(t, tc.host),
				"denied": "deny",
			}
			srv := startServer(t, ln, d, nil)
			client, cset := newClient(t)

			conn, err := client.Dial(t.Context(), srv.addr, header("echo"))
			if err != nil {
				t.Fatalf("Dial: %v", err)
			}
			roundTrip(t, conn, "hello over the mesh")
			conn.Close()

			_, err = client.Dial(t.Context(), srv.addr, header("nope"))
			if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "unknown destination") {
				t.Errorf("Dial unknown endpoint: err = %v, want ErrRefused naming the reason", err)
			}
			if _, err = client.Dial(t.Context(), srv.addr, header("denied")); !errors.Is(err, ErrDenied) || !strings.Contains(err.Error(), "source") {
				t.Errorf("Dial denied endpoint: err = %v, want ErrDenied with the message", err)
			}
			_, err = client.Dial(t.Context(), srv.addr, header("down"))
			if !errors.Is(err, ErrDialFailed) {
				t.Errorf("Dial down workload: err = %v, want ErrDialFailed", err)
			}

			if n := client.Sessions(); n != 1 {
				t.Errorf("Sessions = %d, want 1", n)
			}
			if n := srv.ln.accepted.Load(); n != 1 {
				t.Errorf("server accepted %d conns, want 1", n)
			}
			wantMetric(t, cset, `fogmesh_mesh_streams_total{dir="out",result="ok"} 1`)
			wantMetric(t, cset, `fogmesh_mesh_streams_total{dir="out",result="refused"} 1`)
			wantMetric(t, cset, `fogmesh_mesh_streams_total{dir="out",result="dial_failed"} 1`)
			wantMetric(t, cset, `fogmesh_mesh_sessions{dir="out"} 1`)
			wantMetric(t, srv.metrics, `fogmesh_mesh_streams_total{dir="in",result="ok"} 1`)
			wantMetric(t, srv.metrics, `fogmesh_mesh_streams_total{dir="in",result="refused"} 1`)
			wantMetric(t, srv.metrics, `fogmesh_mesh_streams_total{dir="in",result="dial_failed"} 1`)
			wantMetric(t, srv.metrics, `fogmesh_mesh_sessions{dir="in"} 1`)
		})
	}
}

// TestConcurrentDialsShareSession starts 100 Dials to a new peer at once:
// they must share one session on one TCP connection.
func TestConcurrentDialsShareSession(t *testing.T) {
	srv := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{"echo": serveWorkload(t, "127.0.0.1:0", echo)}, nil)
	client, _ := newClient(t)

	const n = 100
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			conn, err := client.Dial(t.Context(), srv.addr, header("echo"))
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close()
			msg := fmt.Sprintf("message %d", i)
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.WriteString(conn, msg); err != nil {
				errs <- err
				return
			}
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(conn, got); err != nil || string(got) != msg {
				errs <- fmt.Errorf("echo %q: %q, %v", msg, got, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := client.Sessions(); got != 1 {
		t.Errorf("Sessions = %d, want 1", got)
	}
	if got := srv.ln.accepted.Load(); got != 1 {
		t.Errorf("server accepted %d TCP conns, want 1", got)
	}
	eventually(t, "ActiveStreams to reach 0", func() bool { return srv.ActiveStreams() == 0 })
}

// TestHalfClose: the client half-closes its request and reads the reply the
// workload sends after EOF.
func TestHalfClose(t *testing.T) {
	srv := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{"upper": serveWorkload(t, "127.0.0.1:0", upper)}, nil)
	client, _ := newClient(t)
	conn, err := client.Dial(t.Context(), srv.addr, header("upper"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	wantHalfClose(t, conn)
	eventually(t, "ActiveStreams to reach 0", func() bool { return srv.ActiveStreams() == 0 })
}

// TestCloseUnblocksRead: closing a stream conn ends a Read blocked in
// another goroutine, as with any net.Conn.
func TestCloseUnblocksRead(t *testing.T) {
	srv := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{"hold": serveHold(t)}, nil)
	client, _ := newClient(t)
	conn, err := client.Dial(t.Context(), srv.addr, header("hold"))
	if err != nil {
		t.Fatal(err)
	}
	readErr := make(chan error, 1)
	go func() {
		_, err := conn.Read(make([]byte, 1))
		readErr <- err
	}()
	time.Sleep(20 * time.Millisecond)
	conn.Close()
	select {
	case err := <-readErr:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Read after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Close did not unblock Read")
	}
}

// TestGarbageConnection: TCP peers that do not speak yamux are dropped and
// the server keeps serving.
func TestGarbageConnection(t *testing.T) {
	srv := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{"echo": serveWorkload(t, "127.0.0.1:0", echo)},
		func(c *ServerConfig) { c.HeaderTimeout = 200 * time.Millisecond })

	for _, tc := range []struct {
		name string
		send []byte
	}{
		{"http request", []byte("GET / HTTP/1.1\r\nHost: mesh\r\n\r\n")},
		{"tls client hello", []byte("\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03")},
		{"stream header without yamux", hdr(validJSON)},
		{"silent", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw, err := net.Dial("tcp", srv.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer raw.Close()
			raw.Write(tc.send)
			raw.SetReadDeadline(time.Now().Add(3 * time.Second))
			_, err = io.ReadAll(raw) // the server closes: EOF or reset
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("server did not drop the connection")
			}
		})
	}

	// A yamux session that never opens a stream is dropped too.
	raw, err := net.Dial("tcp", srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	idle, err := yamux.Client(raw, YamuxConfigForTest())
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-idle.CloseChan():
	case <-time.After(3 * time.Second):
		t.Error("server kept a session that opened no stream")
	}
	idle.Close()

	client, _ := newClient(t)
	conn, err := client.Dial(t.Context(), srv.addr, header("echo"))
	if err != nil {
		t.Fatalf("Dial after garbage: %v", err)
	}
	roundTrip(t, conn, "still serving")
	conn.Close()
}

// rawSession opens a yamux session to addr without the Client, to misbehave.
func rawSession(t testing.TB, addr string) (*yamux.Session, *net.TCPConn) {
	t.Helper()
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	sess, err := yamux.Client(raw, YamuxConfigForTest())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close() })
	return sess, raw.(*net.TCPConn)
}

// TestBadStreams: streams with bad, truncated, slow or missing headers get
// StatusBadHeader and are closed; the session and server stay usable.
func TestBadStreams(t *testing.T) {
	srv := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{"echo": serveWorkload(t, "127.0.0.1:0", echo)},
		func(c *ServerConfig) { c.HeaderTimeout = 200 * time.Millisecond })
	sess, _ := rawSession(t, srv.addr)

	tests := []struct {
		name      string
		send      []byte
		halfClose bool // send FIN after the bytes
		wantMsg   string
	}{
		{name: "bad magic", send: frame("HTTP", len(validJSON), validJSON), wantMsg: "bad magic"},
		{name: "oversize length", send: frame("FMS1", 5000, ""), wantMsg: "out of range"},
		{name: "garbage JSON", send: hdr("{not json}"), wantMsg: "invalid character"},
		{name: "empty field", send: hdr(`{"namespace":"a"}`), wantMsg: "empty service"},
		{name: "truncated JSON then FIN", send: hdr(validJSON)[:30], halfClose: true, wantMsg: "unexpected EOF"},
		{name: "truncated JSON then silence", send: hdr(validJSON)[:30], wantMsg: "deadline"},
		{name: "nothing at all", wantMsg: "deadline"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := sess.OpenStream()
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			st.SetDeadline(time.Now().Add(3 * time.Second))
			if len(tt.send) > 0 {
				if _, err := st.Write(tt.send); err != nil {
					t.Fatal(err)
				}
			}
			if tt.halfClose {
				st.Close() // yamux Close is a half-close
			}
			code, msg, err := ReadStatus(st)
			if err != nil {
				t.Fatalf("ReadStatus: %v", err)
			}
			if code != StatusBadHeader || !strings.Contains(msg, tt.wantMsg) {
				t.Fatalf("status = %v %q, want %v containing %q", code, msg, StatusBadHeader, tt.wantMsg)
			}
			if rest, err := io.ReadAll(st); err != nil || len(rest) != 0 {
				t.Fatalf("after status: %q, %v; want EOF", rest, err)
			}
			wantMetric(t, srv.metrics, fmt.Sprintf("fogmesh_mesh_bad_streams_total %d", i+1))
		})
	}
	eventually(t, "ActiveStreams to reach 0", func() bool { return srv.ActiveStreams() == 0 })

	// The same session still carries good streams.
	st, err := sess.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	h := header("echo")
	h.Source = "raw"
	if err := WriteHeader(st, h); err != nil {
		t.Fatal(err)
	}
	if code, msg, err := ReadStatus(st); err != nil || code != StatusOK {
		t.Fatalf("good stream after bad ones: %v %q %v", code, msg, err)
	}
	roundTrip(t, st, "still serving")
	st.Close()
}

// TestPeerKilledMidRelay: the peer's TCP connection dies (RST) in the middle
// of relays, to a workload that echoes and to one that never answers or
// closes. Every stream must end and the server keep serving.
func TestPeerKilledMidRelay(t *testing.T) {
	d := mapDialer{
		"echo": serveWorkload(t, "127.0.0.1:0", echo),
		"hold": serveHold(t),
	}
	srv := startServer(t, listen(t, "127.0.0.1:0"), d, nil)
	sess, raw := rawSession(t, srv.addr)

	for _, ep := range []string{"echo", "hold", "hold"} {
		st, err := sess.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		h := header(ep)
		h.Source = "raw"
		if err := WriteHeader(st, h); err != nil {
			t.Fatal(err)
		}
		if code, msg, err := ReadStatus(st); err != nil || code != StatusOK {
			t.Fatalf("open %s: %v %q %v", ep, code, msg, err)
		}
		if _, err := st.Write(bytes.Repeat([]byte("x"), 64<<10)); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "3 active streams", func() bool { return srv.ActiveStreams() == 3 })

	raw.SetLinger(0)
	raw.Close()
	eventually(t, "ActiveStreams to return to 0", func() bool { return srv.ActiveStreams() == 0 })
	eventually(t, "the server to drop the session", func() bool {
		return strings.Contains(metricsText(srv.metrics), `fogmesh_mesh_sessions{dir="in"} 0`+"\n")
	})

	client, _ := newClient(t)
	conn, err := client.Dial(t.Context(), srv.addr, header("echo"))
	if err != nil {
		t.Fatalf("Dial after peer died: %v", err)
	}
	roundTrip(t, conn, "still serving")
	conn.Close()
}

// TestSessionRecovery restarts the server on the same address: the client's
// cached session breaks and the next Dial must work on a new one.
func TestSessionRecovery(t *testing.T) {
	d := mapDialer{"echo": serveWorkload(t, "127.0.0.1:0", echo)}
	srv1 := startServer(t, listen(t, "127.0.0.1:0"), d, nil)
	client, cset := newClient(t)

	conn, err := client.Dial(t.Context(), srv1.addr, header("echo"))
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, conn, "before restart")
	srv1.stop(t)

	// The stream dies with its session, and says so.
	conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); err == nil || err == io.EOF {
		t.Errorf("Read on a stream whose session died: %v, want an error", err)
	}
	conn.Close()

	// The same address (the client's session to it is what is tested);
	// another socket may hold it a while.
	var ln2 net.Listener
	testenv.Rebind(t, srv1.addr, func() (err error) {
		ln2, err = net.Listen("tcp", srv1.addr)
		return err
	})
	t.Cleanup(func() { ln2.Close() })
	srv2 := startServer(t, ln2, d, nil)
	conn, err = client.Dial(t.Context(), srv2.addr, header("echo"))
	if err != nil {
		t.Fatalf("Dial after restart: %v", err)
	}
	roundTrip(t, conn, "after restart")
	conn.Close()
	if n := client.Sessions(); n != 1 {
		t.Errorf("Sessions = %d, want 1", n)
	}
	eventually(t, "the session gauge to settle", func() bool {
		return strings.Contains(metricsText(cset), `fogmesh_mesh_sessions{dir="out"} 1`+"\n")
	})
}

// deadConn is a connection that broke without the session noticing yet:
// writes fail, reads block until Close.
type deadConn struct {
	net.Conn // nil: only Read, Write, Close are used by yamux
	once     sync.Once
	closed   chan struct{}
}

func (c *deadConn) Read([]byte) (int, error)  { <-c.closed; return 0, net.ErrClosed }
func (c *deadConn) Write([]byte) (int, error) { return 0, errors.New("broken pipe (test)") }
func (c *deadConn) Close() error              { c.once.Do(func() { close(c.closed) }); return nil }

// TestDialRetriesBrokenSession: a Dial on a cached session that turns out to
// be dead is retried once on a fresh session.
func TestDialRetriesBrokenSession(t *testing.T) {
	srv := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{"echo": serveWorkload(t, "127.0.0.1:0", echo)}, nil)
	client, _ := newClient(t)

	stale, err := yamux.Client(&deadConn{closed: make(chan struct{})}, YamuxConfigForTest())
	if err != nil {
		t.Fatal(err)
	}
	client.InjectSessionForTest(srv.addr, stale)

	conn, err := client.Dial(t.Context(), srv.addr, header("echo"))
	if err != nil {
		t.Fatalf("Dial over a broken cached session: %v", err)
	}
	roundTrip(t, conn, "retried")
	conn.Close()
	if !stale.IsClosed() {
		t.Error("broken session was not closed")
	}
	if n := client.Sessions(); n != 1 {
		t.Errorf("Sessions = %d, want 1", n)
	}
}

func TestDialErrors(t *testing.T) {
	client, _ := newClient(t)
	if _, err := client.Dial(t.Context(), deadPort(t, "127.0.0.1"), header("echo")); err == nil ||
		!strings.Contains(err.Error(), "connection refused") {
		t.Errorf("Dial to a dead peer: %v, want connection refused", err)
	}
	if _, err := client.Dial(t.Context(), "127.0.0.1:1", Header{Namespace: "a"}); err == nil ||
		!strings.Contains(err.Error(), "empty service") {
		t.Errorf("Dial with a bad header: %v, want it rejected before dialing", err)
	}
	if n := client.Sessions(); n != 0 {
		t.Errorf("Sessions = %d, want 0", n)
	}

	// A peer that accepts TCP but never answers: Dial gives up at DialTimeout.
	ln := listen(t, "127.0.0.1:0")
	go func() {
		c, err := ln.Accept()
		if err == nil {
			defer c.Close()
			io.Copy(io.Discard, c)
		}
	}()
	slow := NewClient(ClientConfig{SourceNode: "n", DialTimeout: 200 * time.Millisecond})
	defer slow.Close()
	start := time.Now()
	_, err := slow.Dial(t.Context(), ln.Addr().String(), header("echo"))
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 2*time.Second {
		t.Errorf("Dial to a mute peer: %v after %v, want DeadlineExceeded after ~200ms", err, time.Since(start))
	}

	client.Close()
	if _, err := client.Dial(t.Context(), "127.0.0.1:1", header("echo")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Dial after Close: %v, want net.ErrClosed", err)
	}
	if err := client.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestServerConfig(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cfg     ServerConfig
		wantErr string
	}{
		{"no listener", ServerConfig{Dialer: mapDialer{}}, "no Listener"},
		{"no dialer", ServerConfig{Listener: listen(t, "127.0.0.1:0")}, "no Dialer"},
		{"negative timeout", ServerConfig{Listener: listen(t, "127.0.0.1:0"), Dialer: mapDialer{}, HeaderTimeout: -1}, "negative timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewServer(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("NewServer err = %v, want %q", err, tc.wantErr)
			}
		})
	}
}

// TestServeContextCancel: Serve returns nil once its ctx is done, after
// closing every session.
func TestServeContextCancel(t *testing.T) {
	ln := listen(t, "127.0.0.1:0")
	s, err := NewServer(ServerConfig{Listener: ln, Dialer: mapDialer{"echo": serveWorkload(t, "127.0.0.1:0", echo)}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx) }()

	client, _ := newClient(t)
	conn, err := client.Dial(t.Context(), ln.Addr().String(), header("echo"))
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, conn, "x")
	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after ctx was canceled")
	}
	if n := s.ActiveStreams(); n != 0 {
		t.Errorf("ActiveStreams after Serve returned = %d", n)
	}
	conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); err == nil {
		t.Error("stream still readable after server shutdown")
	}
	if err := s.Close(); err != nil {
		t.Errorf("Close after Serve returned: %v", err)
	}
}

// TestNoGoroutineLeak runs a server and a client through relays, refusals
// and a broken peer, closes both and checks every goroutine ended.
func TestNoGoroutineLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Run("work", func(t *testing.T) {
		d := mapDialer{
			"echo": serveWorkload(t, "127.0.0.1:0", echo),
			"hold": serveHold(t),
		}
		srv := startServer(t, listen(t, "127.0.0.1:0"), d, func(c *ServerConfig) { c.HeaderTimeout = 100 * time.Millisecond })
		client, _ := newClient(t)
		for range 5 {
			dialRoundTrip(t, client, srv.addr, "echo", "leak?")
		}
		if _, err := client.Dial(t.Context(), srv.addr, header("nope")); !errors.Is(err, ErrRefused) {
			t.Fatal(err)
		}
		// Left open on purpose: Close must end them.
		if _, err := client.Dial(t.Context(), srv.addr, header("hold")); err != nil {
			t.Fatal(err)
		}
		conn, err := client.Dial(t.Context(), srv.addr, header("echo"))
		if err != nil {
			t.Fatal(err)
		}
		roundTrip(t, conn, "open")
		sess, _ := rawSession(t, srv.addr)
		st, _ := sess.OpenStream()
		st.Write([]byte("FMS1")) // a stream stuck in its header

		if err := client.Close(); err != nil {
			t.Fatal(err)
		}
		srv.stop(t)
	})

	waitGoroutines(t, before)
}

// BenchmarkMeshStream measures one stream's bulk throughput
// client -> yamux/TCP -> server -> sink workload, over loopback.
func BenchmarkMeshStream(b *testing.B) {
	const chunk = 1 << 20
	sink, sunk := startSink(b)
	srv := startServer(b, listen(b, "127.0.0.1:0"), mapDialer{"sink": sink}, nil)
	client, _ := newClient(b)
	conn, err := client.Dial(context.Background(), srv.addr, header("sink"))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()

	benchBulk(b, conn, chunk, sunk)
}

// TestRTTMeasuredOnOpenSessions: a client measures the round-trip time to
// a peer it has a session with by pinging it; none before the first dial.
func TestRTTMeasuredOnOpenSessions(t *testing.T) {
	ln := listen(t, "127.0.0.1:0")
	srv := startServer(t, ln, mapDialer{"echo": serveWorkload(t, "127.0.0.1:0", echo)}, nil)
	c := NewClient(ClientConfig{SourceNode: "node-a", PingInterval: 50 * time.Millisecond})
	t.Cleanup(func() { c.Close() })
	if _, ok := c.RTT(srv.addr); ok {
		t.Fatal("RTT known before any session")
	}
	conn, err := c.Dial(t.Context(), srv.addr, header("echo"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	eventually(t, "an RTT", func() bool { _, ok := c.RTT(srv.addr); return ok })
	if d, _ := c.RTT(srv.addr); d <= 0 || d > time.Second {
		t.Fatalf("RTT %v on loopback", d)
	}
}
