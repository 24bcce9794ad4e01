package paths

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/relay"
	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/transport"
)

// The test lab, on loopback only: a mesh CA, a relay serving TCP and UDP on
// one port (as agents assume), and nodes that each run a mesh server on a
// Manager's listener with an echo workload that first says its node's name.

// lab is a CA and its relays.
type lab struct {
	t      *testing.T
	ca     *identity.CA
	relay  string            // the first relay's host:port, TCP and UDP
	relays []string          // every relay's, for the nodes started after them
	stop   map[string]func() // closes a relay, by address
	h2     string            // service "h2" of the nodes started after it is set: an h2c server
}

// newLab starts a CA and a relay on 127.0.0.1.
func newLab(t *testing.T) *lab {
	t.Helper()
	return newLabUDP(t, true)
}

// newLabUDP starts a CA and a relay on 127.0.0.1 whose UDP port, when
// serveUDP is false, is bound but never answers (UDP blocked).
func newLabUDP(t *testing.T, serveUDP bool) *lab {
	t.Helper()
	ca, err := identity.OpenCA(identity.CAConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	l := &lab{t: t, ca: ca, stop: map[string]func(){}}
	l.relay, _ = l.addRelay(serveUDP)
	return l
}

// addRelay starts another relay; stop closes it (idempotent).
func (l *lab) addRelay(serveUDP bool) (addr string, stop func()) {
	t := l.t
	t.Helper()
	srv, err := relay.New(relay.Config{Source: source(t, l.ca, "relay", fmt.Sprintf("r%d", len(l.relays)+1))})
	if err != nil {
		t.Fatal(err)
	}
	ln, pc := listenTCPAndUDP(t)
	addr = ln.Addr().String()
	l.relays = append(l.relays, addr)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); srv.Serve(ln) }()
	go func() {
		defer wg.Done()
		if serveUDP {
			srv.ServeUDP(pc)
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { srv.Close(); pc.Close(); wg.Wait() }) }
	t.Cleanup(stop)
	l.stop[addr] = stop
	return addr, stop
}

// listenTCPAndUDP binds a TCP listener and a UDP socket on the same
// loopback port (a few tries: the UDP port of a fresh TCP port may be
// taken).
func listenTCPAndUDP(t *testing.T) (net.Listener, net.PacketConn) {
	t.Helper()
	var last error
	for range 20 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		pc, err := net.ListenPacket("udp", ln.Addr().String())
		if err == nil {
			return ln, pc
		}
		ln.Close()
		last = err
	}
	t.Fatalf("no loopback port free for both TCP and UDP: %v", last)
	return nil, nil
}

// source is a node identity issued by ca as an agent gets one.
func source(t *testing.T, ca *identity.CA, site, node string) *identity.Source {
	t.Helper()
	src, err := ca.NodeSource(site, node)
	if err != nil {
		t.Fatal(err)
	}
	return src
}

// echoDialer is a node's workloads: service "echo" is a TCP server on
// loopback that writes the node's name and a newline, then echoes;
// "refused" is an unknown destination, "denied" an authorization refusal,
// "slow" never connects.
type echoDialer struct {
	addr  string
	h2    string // the workload of service "h2"
	calls atomic.Int64
}

func (d *echoDialer) DialLocal(ctx context.Context, h transport.Header) (net.Conn, error) {
	d.calls.Add(1)
	switch h.Service {
	case "refused":
		return nil, fmt.Errorf("no endpoint %s: %w", h, transport.ErrUnknownDestination)
	case "denied":
		return nil, fmt.Errorf("policy: %w", transport.ErrDenied)
	case "slow": // a workload that does not accept (the server's dial timeout ends it)
		<-ctx.Done()
		return nil, ctx.Err()
	case "h2":
		var nd net.Dialer
		return nd.DialContext(ctx, "tcp", d.h2)
	}
	var nd net.Dialer
	return nd.DialContext(ctx, "tcp", d.addr)
}

// startEcho serves the echo workload of node name on loopback until stop
// is called or the test ends.
func startEcho(t *testing.T, name string) (addr string, stop func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]struct{}{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				if _, err := io.WriteString(c, name+"\n"); err == nil {
					io.Copy(c, c)
				}
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
			}()
		}
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			ln.Close()
			mu.Lock()
			for c := range conns {
				c.Close()
			}
			mu.Unlock()
			wg.Wait()
		})
	}
	t.Cleanup(stop)
	return ln.Addr().String(), stop
}

// node is one agent: a Manager and the mesh server on its listener.
type node struct {
	name   string
	id     spiffeid.ID
	src    *identity.Source // its identity and deny list (secure nodes)
	addr   string           // its mesh port (TCP)
	m      *Manager
	srv    *transport.Server
	dialer *echoDialer
	srvSet *metrics.Set // the mesh server's metrics
	echo   func()       // stops the echo workload
	close  func()       // closes m, the server and the workload (idempotent)
}

// newNode is a node named name whose workload runs.
func newNode(t *testing.T, name string) *node {
	t.Helper()
	addr, stop := startEcho(t, name)
	return &node{name: name, dialer: &echoDialer{addr: addr}, echo: stop, srvSet: metrics.NewSet()}
}

// peer is how other nodes name n.
func (n *node) peer() Peer { return Peer{Name: n.name, ID: n.id, Addr: n.addr} }

// node starts a secure node of site named name, with the lab's relay and
// config changes mod (applied last; nil: none).
func (l *lab) node(site, name string, mod func(*Config)) *node {
	t := l.t
	t.Helper()
	src := source(t, l.ca, site, name)
	n := newNode(t, name)
	n.dialer.h2 = l.h2
	n.id, n.src = src.SVID().ID, src
	trusted := func(id spiffeid.ID) bool { return id.TrustDomain() == l.ca.TrustDomain() }
	cfg := Config{Self: name, SelfID: n.id, Dialer: n.dialer, PeerCheck: src.CheckPeer,
		TLS:       src.ClientConfig(identity.AuthorizeNode(), identity.ALPNMesh),
		ServerTLS: src.ServerConfig(identity.AuthorizeNode(), identity.ALPNMesh),
		RelayTLS:  src.ClientConfig(relay.AuthorizeRelay(l.ca.TrustDomain())), TrustedSourceID: trusted,
		Relays: slices.Clone(l.relays), DirectHeadStart: 20 * time.Second, PingInterval: 50 * time.Millisecond}
	if mod != nil {
		mod(&cfg)
	}
	startNode(t, n, cfg)
	return n
}

// startNode starts n's Manager on cfg and its mesh server.
func startNode(t *testing.T, n *node, cfg Config) {
	t.Helper()
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		m.Close()
		t.Fatal(err)
	}
	n.addr = ln.Addr().String()
	srv, err := transport.NewServer(transport.ServerConfig{Listener: m.Listener(ln), Dialer: n.dialer,
		TLS: cfg.ServerTLS, TrustedSourceID: cfg.TrustedSourceID, Metrics: n.srvSet, PeerCheck: cfg.PeerCheck})
	if err != nil {
		m.Close()
		ln.Close()
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { defer close(served); srv.Serve(context.Background()) }()
	n.m, n.srv = m, srv
	var once sync.Once
	n.close = func() {
		once.Do(func() {
			m.Close()
			srv.Close()
			<-served
			n.echo()
		})
	}
	t.Cleanup(n.close)
}

// header is a stream header for service svc of the echo workload.
func header(svc string) transport.Header {
	return transport.Header{Namespace: "default", Service: svc, Endpoint: "e1", Port: "tcp"}
}

// ctxT is a context bounded by the test and 20 s.
func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// stream is an open echo stream and its reader.
type stream struct {
	net.Conn
	r *bufio.Reader
}

// openEcho opens an echo stream from m to p and checks that p's workload
// answers with p's name.
func openEcho(t *testing.T, m *Manager, p Peer) *stream {
	t.Helper()
	c, err := m.Dial(ctxT(t), p, header("echo"))
	if err != nil {
		t.Fatalf("dial %s: %v", p.Name, err)
	}
	s := &stream{Conn: c, r: bufio.NewReader(c)}
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	line, err := s.r.ReadString('\n')
	if err != nil {
		c.Close()
		t.Fatalf("greeting from %s: %v", p.Name, err)
	}
	if got := strings.TrimSuffix(line, "\n"); got != p.Name {
		c.Close()
		t.Fatalf("stream to %s reached %q", p.Name, got)
	}
	s.echo(t, "hello")
	return s
}

// echo writes msg and checks it comes back.
func (s *stream) echo(t *testing.T, msg string) {
	t.Helper()
	if err := s.try(msg); err != nil {
		t.Fatal(err)
	}
}

// try writes msg and reads it back, or says why not.
func (s *stream) try(msg string) error {
	s.SetDeadline(time.Now().Add(20 * time.Second))
	defer s.SetDeadline(time.Time{})
	if _, err := io.WriteString(s, msg+"\n"); err != nil {
		return fmt.Errorf("echo write: %w", err)
	}
	line, err := s.r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("echo read: %w", err)
	}
	if line != msg+"\n" {
		return fmt.Errorf("echo: got %q, want %q", line, msg)
	}
	return nil
}

// waitFor polls cond until it holds or 20 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testenv.WaitFor(t, 20*time.Second, what, cond)
}

// waitRelay waits until every node is connected to the relay (and, with
// punching on, has its punching socket ready).
func waitRelay(t *testing.T, punching bool, nodes ...*node) {
	t.Helper()
	for _, n := range nodes {
		waitFor(t, n.name+" connected to the relays", func() bool {
			s := n.m.Status()
			for _, r := range s.Relays {
				if !r.Connected {
					return false
				}
			}
			return len(s.Relays) > 0 && (!punching || s.Punching)
		})
	}
}

// pathTo is m's status row for peer name (ok false: none).
func pathTo(m *Manager, name string) (PathStatus, bool) {
	for _, p := range m.Status().Paths {
		if p.Peer == name {
			return p, true
		}
	}
	return PathStatus{}, false
}

// relayDials is how many relayed sessions m's pool opened.
func relayDials(m *Manager) uint64 {
	var n uint64
	for _, r := range m.Status().Relays {
		n += r.Sessions
	}
	return n
}

// closedAddr is a loopback TCP address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := ln.Addr().String()
	ln.Close()
	return a
}

// streamEnded reports whether a read on c fails at once for another
// reason than its deadline: the path under it was closed.
func streamEnded(c net.Conn) error {
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	_, err := c.Read(make([]byte, 1))
	if err == nil {
		return errors.New("read a byte from a stream that should have ended")
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("stream still open: %w", err)
	}
	return nil
}

// gaugeValue reads a gauge of set (0 if absent).
func gaugeValue(set *metrics.Set, name string) float64 {
	var sb strings.Builder
	set.WritePrometheus(&sb)
	for _, line := range strings.Split(sb.String(), "\n") {
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			var v float64
			fmt.Sscan(rest, &v)
			return v
		}
	}
	return 0
}
