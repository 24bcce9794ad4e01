package meshdns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/miekg/dns"

	"github.com/fogmesh/fogmesh/internal/netseam"
)

const (
	// Timeouts for TCP clients: a client has tcpReadTimeout to send its
	// first query, tcpIdleTimeout for each further one, and each reply
	// write must finish within tcpWriteTimeout. A silent or slow client is
	// dropped when one runs out.
	tcpReadTimeout  = 5 * time.Second
	tcpWriteTimeout = 5 * time.Second
	tcpIdleTimeout  = 10 * time.Second

	// maxTCPConns bounds the TCP connections served at once; one accepted
	// past it is closed at once. The timeouts above bound how long each is
	// held, but not how many: each costs a goroutine and a read buffer of
	// the size its length prefix announces (up to 64 KiB), so a client
	// opening connections that announce 65535 bytes and send nothing
	// would hold memory without bound. Stub resolvers use TCP only after a
	// truncated UDP reply, one query at a time.
	maxTCPConns = 256
)

// Server is the DNS server. Create it with New, run it with Serve, stop it
// by canceling Serve's context or with Close.
type Server struct {
	h      *handler
	cancel context.CancelFunc // cancels h.ctx
	addr   string
	pc     *net.UDPConn
	ln     net.Listener

	// TCP client timeouts; tests shorten them before Serve.
	readTimeout, writeTimeout, idleTimeout time.Duration

	mu          sync.Mutex    // guards the following
	serveCalled bool          // Serve was called
	closed      bool          // Close was called or Serve has returned
	closing     chan struct{} // closed by Close
	served      chan struct{} // closed when Serve returns; nil unless Serve runs
}

// New checks cfg, reads /etc/resolv.conf if cfg.Upstreams is nil, and binds
// the UDP and TCP sockets, so that Addr is known at once. It does not serve;
// call Serve. The caller must call Close or run Serve to release the sockets.
func New(cfg Config, r Resolver) (*Server, error) {
	if r == nil {
		return nil, errors.New("meshdns: nil Resolver")
	}
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("meshdns: config: %w", err)
	}
	ups := cfg.Upstreams
	if ups == nil {
		var err error
		ups, err = systemUpstreams(resolvConfPath)
		if err != nil {
			cfg.Logger.Warn("meshdns: no upstream resolvers, names outside the zone will fail", "zone", cfg.Zone, "err", err)
		}
	}
	pc, ln, err := netseam.ListenTwin(cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("meshdns: %w", err)
	}
	addr := ln.Addr().String()
	// Forwarding to ourselves would loop until the forward limit is hit,
	// as happens when resolv.conf names this server.
	ups = slices.DeleteFunc(slices.Clone(ups), func(u string) bool {
		if isSelf(u, ln.Addr().(*net.TCPAddr), localAddrs) {
			cfg.Logger.Warn("meshdns: not forwarding to this server itself", "upstream", u, "addr", addr)
			return true
		}
		return false
	})

	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		h:            newHandler(ctx, &cfg, r, ups),
		cancel:       cancel,
		addr:         addr,
		pc:           pc,
		ln:           ln,
		readTimeout:  tcpReadTimeout,
		writeTimeout: tcpWriteTimeout,
		idleTimeout:  tcpIdleTimeout,
		closing:      make(chan struct{}),
	}, nil
}

// Addr returns the host:port the server listens on, for UDP and TCP.
func (s *Server) Addr() string { return s.addr }

// Serve answers queries over UDP and TCP until ctx is done or Close is
// called, and then waits for the queries in flight. It returns nil on such
// a clean shutdown, including when Close came first, and an error if a
// socket fails. Serve may be called only once.
func (s *Server) Serve(ctx context.Context) error {
	s.mu.Lock()
	if s.serveCalled {
		s.mu.Unlock()
		return errors.New("meshdns: serve: called twice")
	}
	s.serveCalled = true
	if s.closed {
		// Close won the race with a Serve started in a goroutine.
		s.mu.Unlock()
		return nil
	}
	served := make(chan struct{})
	s.served = served
	s.mu.Unlock()
	defer close(served)

	common := func(srv *dns.Server) *dns.Server {
		srv.Handler = s.h
		srv.MsgAcceptFunc = s.h.acceptMsg
		srv.MsgInvalidFunc = s.h.invalidMsg
		return srv
	}
	udp := newDNSRunner(common(&dns.Server{
		PacketConn: s.pc,
		UDPSize:    udpReadSize,
	}))
	tcp := newDNSRunner(common(&dns.Server{
		Listener: &timeoutListener{Listener: s.ln, writeTimeout: s.writeTimeout,
			slots: make(chan struct{}, maxTCPConns), refused: s.h.metrics.tcpRefused},
		ReadTimeout:   s.readTimeout,
		IdleTimeout:   func() time.Duration { return s.idleTimeout },
		MaxTCPQueries: -1,
	}))
	go udp.serveDNS()
	go tcp.serveDNS()

	var err error
	select {
	case <-ctx.Done():
	case <-s.closing:
	case <-udp.exited:
		err = fmt.Errorf("meshdns: serve udp %s: %w", s.addr, udp.errOrStopped())
	case <-tcp.exited:
		err = fmt.Errorf("meshdns: serve tcp %s: %w", s.addr, tcp.errOrStopped())
	}

	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel() // abort forwards so shutdown need not wait for upstreams
	udp.shutdown()
	tcp.shutdown()
	s.closeSockets() // dns.Server closes them, except if it failed to start
	return err
}

// Close stops the server and waits until Serve has returned. It is safe to
// call more than once and without Serve.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		served := s.served
		s.mu.Unlock()
		if served != nil {
			<-served
		}
		return nil
	}
	s.closed = true
	close(s.closing)
	served := s.served
	s.mu.Unlock()

	if served != nil {
		<-served
		return nil
	}
	s.cancel()
	if err := s.closeSockets(); err != nil {
		return fmt.Errorf("meshdns: close: %w", err)
	}
	return nil
}

// closeSockets closes both sockets, ignoring a socket already closed.
func (s *Server) closeSockets() error {
	var errs []error
	for _, c := range []interface{ Close() error }{s.pc, s.ln} {
		if err := c.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// dnsRunner runs one dns.Server and lets Serve stop it whether or not it
// got as far as listening.
type dnsRunner struct {
	srv     *dns.Server
	started chan struct{} // closed when srv serves
	exited  chan struct{} // closed when srv has returned
	err     error         // srv's error; valid once exited is closed
}

func newDNSRunner(srv *dns.Server) *dnsRunner {
	r := &dnsRunner{srv: srv, started: make(chan struct{}), exited: make(chan struct{})}
	srv.NotifyStartedFunc = func() { close(r.started) }
	return r
}

// serveDNS is the goroutine running the dns.Server.
func (r *dnsRunner) serveDNS() {
	defer close(r.exited)
	r.err = r.srv.ActivateAndServe()
}

// shutdown stops the dns.Server and waits for it and its queries in flight.
func (r *dnsRunner) shutdown() {
	select {
	case <-r.started:
		// The error only says the server had stopped already.
		_ = r.srv.Shutdown()
	case <-r.exited:
	}
	<-r.exited
}

// errOrStopped returns the error the dns.Server stopped with, which is nil
// if it stopped without one; call it once exited is closed.
func (r *dnsRunner) errOrStopped() error {
	if r.err == nil {
		return errors.New("stopped unexpectedly")
	}
	return r.err
}

// timeoutListener gives each accepted connection a deadline for every
// write; dns.Server sets read deadlines but no write deadline, so a client
// that never reads its replies would hold a connection forever. It also
// holds at most cap(slots) connections open: it closes those accepted
// beyond, counting them in refused.
type timeoutListener struct {
	net.Listener
	writeTimeout time.Duration
	slots        chan struct{} // one token per connection open
	refused      *metrics.Counter
}

func (l *timeoutListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.slots <- struct{}{}:
			return &timeoutConn{Conn: c, writeTimeout: l.writeTimeout, release: sync.OnceFunc(func() { <-l.slots })}, nil
		default:
			l.refused.Inc()
			c.Close()
		}
	}
}

type timeoutConn struct {
	net.Conn
	writeTimeout time.Duration
	release      func() // frees the connection's slot; idempotent
}

func (c *timeoutConn) Write(b []byte) (int, error) {
	if err := c.Conn.SetWriteDeadline(time.Now().Add(c.writeTimeout)); err != nil {
		return 0, err
	}
	return c.Conn.Write(b)
}

func (c *timeoutConn) Close() error {
	defer c.release()
	return c.Conn.Close()
}

// isSelf reports whether upstream (host:port) reaches the server bound to
// bound: the same port, and the bound address or, for a server bound to the
// wildcard address, a loopback or wildcard address or one of the host's
// own (localAddrs). "localhost" is a loopback address. A name other than
// localhost is not resolved and never counts as self.
func isSelf(upstream string, bound *net.TCPAddr, localAddrs func() []netip.Addr) bool {
	host, port, err := net.SplitHostPort(upstream)
	if err != nil || port != strconv.Itoa(bound.Port) {
		return false
	}
	var ip netip.Addr
	if strings.EqualFold(host, "localhost") {
		ip = netip.MustParseAddr("127.0.0.1")
	} else if ip, err = netip.ParseAddr(host); err != nil {
		return false
	}
	ip = ip.Unmap().WithZone("")
	b, _ := netip.AddrFromSlice(bound.IP)
	b = b.Unmap()
	switch {
	case !b.IsUnspecified():
		return ip == b || strings.EqualFold(host, "localhost") && b.IsLoopback()
	case ip.IsLoopback() || ip.IsUnspecified():
		return true
	default:
		return slices.Contains(localAddrs(), ip)
	}
}

// localAddrs returns the addresses of the host's interfaces; nil if they
// cannot be read.
func localAddrs() []netip.Addr {
	ifas, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range ifas {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out = append(out, p.Addr().Unmap())
		}
	}
	return out
}
