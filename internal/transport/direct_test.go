package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/hashicorp/yamux"
	"golang.org/x/time/rate"

	"github.com/fogmesh/fogmesh/internal/netseam"
)

// directBytesLog collects what a client's DirectBytes reports.
type directBytesLog struct {
	mu      sync.Mutex
	in, out uint64
	calls   int
}

// newDirectClient is a plaintext client with direct streams.
func newDirectClient(t testing.TB) (*Client, *metrics.Set, *directBytesLog) {
	set := metrics.NewSet()
	log := &directBytesLog{}
	c := NewClient(ClientConfig{SourceNode: "node-a", Metrics: set, DirectStreams: true,
		DirectBytes: func(_ string, in, out uint64) {
			log.mu.Lock()
			log.in, log.out, log.calls = log.in+in, log.out+out, log.calls+1
			log.mu.Unlock()
		}})
	t.Cleanup(func() { c.Close() })
	return c, set, log
}

// TestDirectStreams: with DirectStreams, a plain TCP stream gets a TCP
// connection of its own (no yamux session), which relays both ways,
// half-closes, and is a socket the relays can splice; an L7 stream (an HTTP
// proxy's pooled upstream connection) gets one too; the connection's bytes
// and RTT are reported.
func TestDirectStreams(t *testing.T) {
	ts := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{"ep": serveWorkload(t, "127.0.0.1:0", echo)}, nil)
	c, set, log := newDirectClient(t)
	ctx := context.Background()

	conn, err := c.Dial(ctx, ts.addr, header("ep"))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := conn.(interface{ TCP() *net.TCPConn }); !ok {
		t.Fatalf("direct stream is a %T, not a socket wrapper the relay splices", conn)
	}
	if _, ok := conn.(io.ReaderFrom); !ok {
		t.Fatalf("direct stream %T has no ReadFrom: no splice", conn)
	}
	roundTrip(t, conn, "hello")
	if n := c.Sessions(); n != 0 {
		t.Errorf("a direct stream opened %d yamux sessions", n)
	}
	if !c.Live(ts.addr) {
		t.Error("Live is false after a direct stream connected")
	}
	if _, ok := c.RTT(ts.addr); !ok {
		t.Error("no RTT from the direct stream's socket")
	}

	// Half-close: the echo ends its side after ours, and the bytes before
	// it arrive.
	if _, err := io.WriteString(conn, "bye"); err != nil {
		t.Fatal(err)
	}
	if err := conn.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	rest, err := io.ReadAll(conn)
	if err != nil || string(rest) != "bye" {
		t.Fatalf("after half-close read %q, %v; want \"bye\"", rest, err)
	}
	conn.Close()
	log.mu.Lock()
	in, out, calls := log.in, log.out, log.calls
	log.mu.Unlock()
	// The header (4+2+JSON) and status (3) are counted with the bytes.
	if calls != 1 || in < 3+8 || out < 6+8 {
		t.Errorf("DirectBytes: %d calls, in %d, out %d; want 1 call, in ≥ 11, out ≥ 14", calls, in, out)
	}

	// A second stream: a second connection.
	conn2, err := c.Dial(ctx, ts.addr, header("ep"))
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, conn2, "again")
	conn2.Close()
	if got := ts.ln.accepted.Load(); got != 2 {
		t.Errorf("server accepted %d connections for 2 direct streams", got)
	}

	// An L7 stream is direct too.
	h := header("ep")
	h.L7 = true
	l7, err := c.Dial(ctx, ts.addr, h)
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, l7, "l7")
	l7.Close()
	if n := c.Sessions(); n != 0 {
		t.Errorf("an L7 stream opened %d sessions, want none", n)
	}
	wantMetric(t, set, `fogmesh_mesh_direct_streams_total{dir="out"} 3`)
	wantMetric(t, ts.metrics, `fogmesh_mesh_direct_streams_total{dir="in"} 3`)
	wantMetric(t, ts.metrics, `fogmesh_mesh_streams_total{dir="in",result="ok"} 3`)
}

// TestDirectStreamAnswers: a direct stream gets the same answers as a
// yamux stream: refused, denied, dial failed.
func TestDirectStreamAnswers(t *testing.T) {
	ts := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{"dead": deadPort(t, "127.0.0.1"), "no": "deny"}, nil)
	c, _, _ := newDirectClient(t)
	for ep, want := range map[string]error{"unknown": ErrRefused, "dead": ErrDialFailed, "no": ErrDenied} {
		conn, err := c.Dial(context.Background(), ts.addr, header(ep))
		if !errors.Is(err, want) {
			t.Errorf("endpoint %s: Dial = %v, %v; want %v", ep, conn, err, want)
		}
	}
	// A peer that is not there: the path is not live.
	if _, err := c.Dial(context.Background(), deadPort(t, "127.0.0.1"), header("x")); err == nil {
		t.Fatal("Dial to a closed port worked")
	}
	if c.Live(ts.addr) != true {
		t.Error("the server's path is not live after its refusals")
	}
	if c.Sessions() != 0 {
		t.Errorf("%d sessions", c.Sessions())
	}
}

// TestDirectStreamsEndWithClientAndServer: closing the client, or
// dropping the peer's session, ends its open direct streams; closing the
// server ends a direct stream still in
// its header, long before the header timeout.
func TestDirectStreamsEndWithClientAndServer(t *testing.T) {
	ts := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{"ep": serveWorkload(t, "127.0.0.1:0", echo)},
		func(cfg *ServerConfig) { cfg.HeaderTimeout = time.Minute })
	c, _, _ := newDirectClient(t)
	conn, err := c.Dial(context.Background(), ts.addr, header("ep"))
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, conn, "x")
	c.Close()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read after Client.Close: %v, want the conn closed", err)
	}

	eventually(t, "the server's end of the closed stream ends", func() bool { return ts.ActiveStreams() == 0 })

	// DropSession (gossip declared the peer dead) ends its direct streams.
	c2, _, _ := newDirectClient(t)
	conn, err = c2.Dial(context.Background(), ts.addr, header("ep"))
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, conn, "y")
	if !c2.DropSession(ts.addr) {
		t.Error("DropSession found nothing to drop")
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read after DropSession: %v, want the conn closed", err)
	}
	eventually(t, "the server's end of the dropped stream ends", func() bool { return ts.ActiveStreams() == 0 })

	raw, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if _, err := raw.Write([]byte("FMS1")); err != nil { // and no more
		t.Fatal(err)
	}
	eventually(t, "the server reads the direct stream's header", func() bool { return ts.ActiveStreams() == 1 })
	closeWithin(t, ts, 5*time.Second, "Server.Close waits for a direct stream's header")
}

// TestDirectStreamHostileBytes: on the plaintext mesh port, a connection
// that starts like a direct stream but sends a bad header gets
// StatusBadHeader; one that sends nothing is dropped at the header
// timeout; a yamux session still works beside them.
func TestDirectStreamHostileBytes(t *testing.T) {
	ts := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{"ep": serveWorkload(t, "127.0.0.1:0", echo)},
		func(cfg *ServerConfig) { cfg.HeaderTimeout = 300 * time.Millisecond })
	for _, junk := range []string{"FMS1\x00\x00", "FMS1\xff\xff", "FMS2\x00\x02{}", "FMS1\x00\x02{}", "Fxxxxxx"} {
		raw, err := net.Dial("tcp", ts.addr)
		if err != nil {
			t.Fatal(err)
		}
		raw.SetDeadline(time.Now().Add(5 * time.Second))
		raw.Write([]byte(junk))
		st, _, err := ReadStatus(raw)
		raw.Close()
		if err != nil || st != StatusBadHeader {
			t.Errorf("%q: status %v, %v; want bad header", junk, st, err)
		}
	}
	raw, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(5 * time.Second))
	if n, err := raw.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a silent connection read %d bytes, %v; want it closed at the header timeout", n, err)
	}

	c, _ := newClient(t) // yamux
	conn, err := c.Dial(context.Background(), ts.addr, header("ep"))
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, conn, "still")
	conn.Close()
	wantMetric(t, ts.metrics, `fogmesh_mesh_bad_streams_total 5`)
}

// TestDirectStreamToOlderAgent: a peer whose mesh port knows only yamux
// (an agent that predates direct streams) closes a direct stream
// unanswered; the Dial then opens its stream on the session and works,
// and the next Dial goes to the session at once.
func TestDirectStreamToOlderAgent(t *testing.T) {
	echoAddr := serveWorkload(t, "127.0.0.1:0", echo)
	ln := listen(t, "127.0.0.1:0")
	var accepted atomic.Int64
	go func() { // the older agent: every connection is a yamux session
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			sess, err := yamux.Server(conn, yamuxConfig(DefaultStreamWindow))
			if err != nil {
				conn.Close()
				continue
			}
			go func() {
				defer sess.Close()
				for {
					st, err := sess.Accept()
					if err != nil {
						return
					}
					go func() {
						defer st.Close()
						if _, err := ReadHeader(st); err != nil {
							return
						}
						local, err := net.Dial("tcp", echoAddr)
						if err != nil {
							return
						}
						defer local.Close()
						WriteStatus(st, StatusOK, "")
						go func() { io.Copy(local, st); local.Close() }()
						io.Copy(st, local)
					}()
				}
			}()
		}
	}()
	c, _, _ := newDirectClient(t)
	for i := range 2 {
		conn, err := c.Dial(context.Background(), ln.Addr().String(), header("ep"))
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		roundTrip(t, conn, "old")
		conn.Close()
	}
	// One refused direct connection, then one session for both streams.
	if n := accepted.Load(); n != 2 {
		t.Errorf("the older agent accepted %d connections, want 2 (a direct try, a session)", n)
	}
	if n := c.Sessions(); n != 1 {
		t.Errorf("%d sessions, want 1", n)
	}
}

// TestDirectStreamRate: direct streams to a peer are capped (directRate):
// past the cap a stream opens on the session and works the same.
func TestDirectStreamRate(t *testing.T) {
	ts := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{"ep": serveWorkload(t, "127.0.0.1:0", echo)}, nil)
	c, set, _ := newDirectClient(t)
	p, err := c.peerForTest(ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	p.directRate = rate.NewLimiter(0, 3) // three, and no refill
	for i := range 5 {
		conn, err := c.Dial(context.Background(), ts.addr, header("ep"))
		if err != nil {
			t.Fatal(err)
		}
		roundTrip(t, conn, fmt.Sprint(i))
		conn.Close()
	}
	wantMetric(t, set, `fogmesh_mesh_direct_streams_total{dir="out"} 3`)
	wantMetric(t, set, `fogmesh_mesh_streams_total{dir="out",result="ok"} 5`)
	if n := c.Sessions(); n != 1 {
		t.Errorf("%d sessions after the cap, want 1", n)
	}
}

// closeRaceNet dials TCP once Client.Close has returned (closed is closed).
type closeRaceNet struct {
	dialing chan struct{}
	closed  chan struct{}
}

func (n closeRaceNet) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	close(n.dialing)
	<-n.closed
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

func (n closeRaceNet) Listen(ctx context.Context, network, addr string) (net.Listener, error) {
	return nil, errors.New("not used")
}

// TestDirectDialRacesClose: a client closed while a direct stream's
// connection is being dialed fails that Dial (net.ErrClosed) and closes the
// connection; it does not panic (found in review).
func TestDirectDialRacesClose(t *testing.T) {
	ts := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{"ep": serveWorkload(t, "127.0.0.1:0", echo)}, nil)
	n := closeRaceNet{dialing: make(chan struct{}), closed: make(chan struct{})}
	c := NewClient(ClientConfig{SourceNode: "node-a", DirectStreams: true, Network: n})
	errc := make(chan error, 1)
	go func() {
		conn, err := c.Dial(context.Background(), ts.addr, header("ep"))
		if conn != nil {
			conn.Close()
		}
		errc <- err
	}()
	<-n.dialing
	c.Close()
	close(n.closed)
	if err := <-errc; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Dial after Close: %v, want net.ErrClosed", err)
	}
	eventually(t, "the server to see the connection go", func() bool { return ts.ActiveStreams() == 0 })
}

// TestServerCloseWithSilentPlainConn: Server.Close does not wait for a
// plaintext connection that has not sent its first byte (found in
// review: it waited out HeaderTimeout).
func TestServerCloseWithSilentPlainConn(t *testing.T) {
	ts := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{}, func(cfg *ServerConfig) { cfg.HeaderTimeout = time.Minute })
	raw, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	eventually(t, "the server to accept it", func() bool { return ts.ln.accepted.Load() == 1 })
	closeWithin(t, ts, 5*time.Second, "Server.Close waits for a silent connection's first byte")
}

// failDirectNet is the OS network whose DirectDialer always fails, as a
// connect does when no local port is free: sessions still dial.
type failDirectNet struct{ netseam.OS }

func (failDirectNet) DialDirect(context.Context, string) (net.Conn, error) {
	return nil, &net.OpError{Op: "dial", Net: "tcp", Err: syscall.EADDRNOTAVAIL}
}

// TestDirectStreamNotConnectedUsesSession: when a direct stream's own
// connection cannot be made, the stream opens on the session instead of
// failing.
func TestDirectStreamNotConnectedUsesSession(t *testing.T) {
	ts := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{"ep": serveWorkload(t, "127.0.0.1:0", echo)}, nil)
	c := NewClient(ClientConfig{SourceNode: "node-a", Metrics: metrics.NewSet(), DirectStreams: true, Network: failDirectNet{}})
	t.Cleanup(func() { c.Close() })
	conn, err := c.Dial(context.Background(), ts.addr, header("ep"))
	if err != nil {
		t.Fatalf("Dial with the direct connection failing: %v", err)
	}
	roundTrip(t, conn, "via the session")
	conn.Close()
	if n := c.Sessions(); n != 1 {
		t.Errorf("%d sessions, want the one that carried the stream", n)
	}
}
