package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/fogmesh/fogmesh/bench/benchpki"
)

const (
	dialTimeout      = 5 * time.Second // TCP dial and TLS handshake, each
	routeReadTimeout = 5 * time.Second // B: the route byte must arrive by then
)

// yamuxConfig is the session configuration of internal/transport's mesh
// port (internal/transport/stream.go, yamuxConfig), copied so the pair
// multiplexes exactly as the agents do.
func yamuxConfig() *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.MaxStreamWindowSize = 16 << 20
	cfg.EnableKeepAlive = true
	cfg.KeepAliveInterval = 5 * time.Second
	cfg.ConnectionWriteTimeout = 10 * time.Second
	cfg.StreamCloseTimeout = time.Minute
	cfg.LogOutput = io.Discard
	return cfg
}

// node is the state both sides share: the connections to close on shutdown,
// the goroutines to wait for, the connection limit and counters.
type node struct {
	name  string
	slots chan struct{} // one per proxied connection in flight

	mu     sync.Mutex // guards the following
	closed bool
	conns  map[io.Closer]struct{} // listeners, sessions, conns

	wg sync.WaitGroup

	proxied, refused, full, resumed atomic.Int64
}

func newNode(name string, maxConns int) *node {
	return &node{name: name, slots: make(chan struct{}, maxConns), conns: make(map[io.Closer]struct{})}
}

// track registers c to be closed on shutdown; false (and c closed) if the
// node is already shutting down.
func (n *node) track(c io.Closer) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		c.Close()
		return false
	}
	n.conns[c] = struct{}{}
	return true
}

func (n *node) untrack(c io.Closer) {
	n.mu.Lock()
	delete(n.conns, c)
	n.mu.Unlock()
}

// shutdown closes everything tracked and waits for the goroutines. It is
// idempotent.
func (n *node) shutdown() {
	n.mu.Lock()
	cs := make([]io.Closer, 0, len(n.conns))
	for c := range n.conns {
		cs = append(cs, c)
	}
	n.closed = true
	n.conns = map[io.Closer]struct{}{}
	n.mu.Unlock()
	for _, c := range cs {
		c.Close()
	}
	n.wg.Wait()
	fmt.Fprintf(os.Stderr, "tlspair %s: %d connections proxied, %d refused; TLS handshakes: %d full, %d resumed\n",
		n.name, n.proxied.Load(), n.refused.Load(), n.full.Load(), n.resumed.Load())
}

// acceptLoop accepts on ln until it is closed and runs handle for each
// connection in its own goroutine, within the connection limit.
func (n *node) acceptLoop(ln net.Listener, handle func(net.Conn)) {
	defer n.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		select {
		case n.slots <- struct{}{}:
		default:
			n.refused.Add(1)
			c.Close()
			continue
		}
		if !n.track(c) {
			<-n.slots
			return
		}
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			defer func() { <-n.slots }()
			defer n.untrack(c)
			defer c.Close()
			handle(c)
		}()
	}
}

func (n *node) listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	n.track(ln)
	return ln, nil
}

func (n *node) countHandshake(c *tls.Conn) {
	if c.ConnectionState().DidResume {
		n.resumed.Add(1)
	} else {
		n.full.Add(1)
	}
}

// ---------------------------------------------------------------- B

func runB(ctx context.Context, args relayArgs) error {
	n := newNode("b ("+args.mode+")", args.maxConns)
	var tcfg *tls.Config
	if args.tls() {
		pool, cert, err := benchpki.LoadDir(args.certs, "b")
		if err != nil {
			return err
		}
		tcfg = benchpki.ServerConfig(pool, cert)
	}
	ln, err := n.listen(args.listen)
	if err != nil {
		return err
	}
	n.wg.Add(1)
	go n.acceptLoop(ln, func(c net.Conn) { n.serveB(args, tcfg, c) })
	<-ctx.Done()
	n.shutdown()
	return nil
}

// serveB handles one connection from A: TLS if the mode says so, then one
// routed connection, or a yamux session of routed streams.
func (n *node) serveB(args relayArgs, tcfg *tls.Config, c net.Conn) {
	if tcfg != nil {
		tc := tls.Server(c, tcfg)
		hctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			return
		}
		n.countHandshake(tc)
		c = tc
		defer tc.Close()
	}
	if !args.yamux() {
		n.routeB(args.addrs, c)
		return
	}
	sess, err := yamux.Server(c, yamuxConfig())
	if err != nil {
		return
	}
	if !n.track(sess) {
		return
	}
	defer n.untrack(sess)
	defer sess.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			return
		}
		sc := &streamConn{Stream: st}
		if !n.track(sc) {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer n.untrack(sc)
			defer sc.Close()
			n.routeB(args.addrs, sc)
		}()
	}
}

// routeB reads the route byte from c, dials that target and relays.
func (n *node) routeB(targets []string, c net.Conn) {
	var b [1]byte
	c.SetReadDeadline(time.Now().Add(routeReadTimeout))
	if _, err := io.ReadFull(c, b[:]); err != nil || int(b[0]) >= len(targets) {
		return
	}
	c.SetReadDeadline(time.Time{})
	up, err := net.DialTimeout("tcp", targets[b[0]], dialTimeout)
	if err != nil {
		return
	}
	if !n.track(up) {
		return
	}
	defer n.untrack(up)
	n.proxied.Add(1)
	relay(c, up)
}

// ---------------------------------------------------------------- A

func runA(ctx context.Context, args relayArgs) error {
	n := newNode("a ("+args.mode+")", args.maxConns)
	d := &dialer{node: n, peer: args.peer, mux: args.yamux()}
	if args.tls() {
		pool, cert, err := benchpki.LoadDir(args.certs, "a")
		if err != nil {
			return err
		}
		d.tls = benchpki.ClientConfig(pool, cert, "b")
		if args.resume && !args.yamux() {
			d.tls.ClientSessionCache = tls.NewLRUClientSessionCache(64)
		}
	}
	lns := make([]net.Listener, 0, len(args.addrs))
	for _, addr := range args.addrs {
		ln, err := n.listen(addr)
		if err != nil {
			n.shutdown()
			return err
		}
		lns = append(lns, ln)
	}
	for i, ln := range lns {
		route := byte(i)
		n.wg.Add(1)
		go n.acceptLoop(ln, func(c net.Conn) {
			up, err := d.open(route)
			if err != nil {
				fmt.Fprintf(os.Stderr, "tlspair a: %v\n", err)
				return
			}
			if !n.track(up) {
				return
			}
			defer n.untrack(up)
			n.proxied.Add(1)
			relay(c, up)
		})
	}
	<-ctx.Done()
	n.shutdown()
	return nil
}

// dialer opens A→B connections or streams, each with its route byte sent.
type dialer struct {
	node *node
	peer string
	tls  *tls.Config // nil: plaintext
	mux  bool        // one yamux session, a stream per connection

	mu   sync.Mutex // guards sess; held while dialing it
	sess *yamux.Session
}

func (d *dialer) open(route byte) (net.Conn, error) {
	var c net.Conn
	if d.mux {
		sess, err := d.session()
		if err != nil {
			return nil, err
		}
		st, err := sess.OpenStream()
		if err != nil {
			return nil, fmt.Errorf("open stream: %w", err)
		}
		c = &streamConn{Stream: st}
	} else {
		var err error
		if c, err = d.dial(); err != nil {
			return nil, err
		}
	}
	if _, err := c.Write([]byte{route}); err != nil {
		c.Close()
		return nil, fmt.Errorf("write route: %w", err)
	}
	return c, nil
}

// dial opens one connection to B: TCP, then TLS if configured.
func (d *dialer) dial() (net.Conn, error) {
	c, err := net.DialTimeout("tcp", d.peer, dialTimeout)
	if err != nil {
		return nil, err
	}
	if d.tls == nil {
		return c, nil
	}
	tc := tls.Client(c, d.tls)
	hctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("tls handshake with %s: %w", d.peer, err)
	}
	d.node.countHandshake(tc)
	return tc, nil
}

// session returns the live yamux session to B, dialing it if there is none.
func (d *dialer) session() (*yamux.Session, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.sess != nil && !d.sess.IsClosed() {
		return d.sess, nil
	}
	c, err := d.dial()
	if err != nil {
		return nil, err
	}
	sess, err := yamux.Client(c, yamuxConfig())
	if err != nil {
		c.Close()
		return nil, err
	}
	if !d.node.track(sess) {
		return nil, net.ErrClosed
	}
	d.sess = sess
	return sess, nil
}

// ---------------------------------------------------------------- relay

// relay copies both ways until both directions end, half-closing each
// destination when its source ends cleanly; an error closes both at once.
func relay(a, b net.Conn) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		copyHalf(b, a)
	}()
	copyHalf(a, b)
	<-done
	a.Close()
	b.Close()
}

func copyHalf(dst, src net.Conn) {
	// A plain io.Copy on the interface values, as internal/proxy.Relay
	// does: between two *net.TCPConn it splices.
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		src.Close()
		return
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
		return
	}
	dst.Close()
}

// streamConn gives a yamux stream the half-close the relay expects:
// CloseWrite sends FIN; Close also ends a blocked Read (yamux's Close only
// sends FIN), as internal/transport's streamConn does.
type streamConn struct {
	*yamux.Stream
	closed atomic.Bool
}

func (c *streamConn) CloseWrite() error { return c.Stream.Close() }

func (c *streamConn) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	err := c.Stream.Close()
	c.Stream.SetReadDeadline(time.Unix(1, 0))
	return err
}

// ---------------------------------------------------------------- probe

// runProbe reports whether addr speaks TLS 1.3: it completes a handshake as
// a client without a certificate and without verifying the server (it only
// asks which protocol the port speaks; no data is sent) and prints the
// server's certificate names.
func runProbe(addr string) error {
	if err := loopback(addr); err != nil {
		return err
	}
	c, err := net.DialTimeout("tcp", addr, dialTimeout)
	if err != nil {
		return err
	}
	defer c.Close()
	tc := tls.Client(c, &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true})
	tc.SetDeadline(time.Now().Add(dialTimeout))
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("%s: no TLS 1.3 handshake: %w", addr, err)
	}
	st := tc.ConnectionState()
	names := ""
	if len(st.PeerCertificates) > 0 {
		leaf := st.PeerCertificates[0]
		names = leaf.Subject.CommonName
		for _, u := range leaf.URIs {
			names += " " + u.String()
		}
	}
	fmt.Printf("%s: TLS 1.3, %s, server certificate: %s\n", addr, tls.CipherSuiteName(st.CipherSuite), names)
	return nil
}
