// Package gateway lets one agent be the way out of a site where only its
// node may connect out: the site's other agents reach their control plane
// and relays through it with HTTP CONNECT (RFC 9110 §9.3.6), and the
// gateway forwards only to the addresses it was given (its own control
// plane and relays). Everything the gateway forwards is TLS end to end
// between the node and the control plane or relay; the gateway sees
// ciphertext.
//
// Peers reach the site's other nodes through the relays those nodes keep
// a connection to via the gateway; inside the site, nodes reach each
// other directly.
package gateway

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/fogmesh/fogmesh/internal/netseam"
	"github.com/fogmesh/fogmesh/internal/proxy"
)

// Defaults of Config.
const (
	DefaultMaxConns          = 1024
	DefaultMaxConnsPerClient = 64
	DefaultDialTimeout       = 5 * time.Second
	DefaultIdleTimeout       = 5 * time.Minute
)

// Config configures a Server.
type Config struct {
	// Allow lists the addresses (host:port, as the nodes name them) the
	// gateway forwards to. Required; anything else is refused (403).
	Allow []string
	// Network dials the allowed addresses (default the OS's).
	Network netseam.Network
	// MaxConns bounds the connections forwarded at once (default 1024);
	// more are refused (503).
	MaxConns int
	// MaxConnsPerClient bounds one client address's share (default 64),
	// so one host of the site cannot hold every slot.
	MaxConnsPerClient int
	DialTimeout       time.Duration // default 5s
	// IdleTimeout closes a forwarded connection that moved no byte in
	// either direction for this long, freeing its slot (default 5m;
	// negative: never). What the site's agents keep through the gateway
	// (sync streams, relay connections) pings far more often.
	IdleTimeout time.Duration
	Logger      *slog.Logger
	Metrics     *metrics.Set
}

// Server is a site gateway.
type Server struct {
	cfg   Config
	allow map[string]bool
	srv   *http.Server
	slots chan struct{}
	mu    sync.Mutex
	per   map[string]int // forwarded connections per client IP
	// closed is set by Close under mu; a handler counts itself in wg
	// under mu only while it is false, so every wg.Add happens before
	// Close's Wait or is refused.
	closed bool
	ctx    context.Context
	stop   context.CancelFunc
	wg     sync.WaitGroup

	mForwarded, mRefused, mBytes, mIdle *metrics.Counter
}

// New checks cfg.
func New(cfg Config) (*Server, error) {
	if len(cfg.Allow) == 0 {
		return nil, errors.New("gateway: nothing to forward to (no control plane or relay address)")
	}
	for _, a := range cfg.Allow {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return nil, fmt.Errorf("gateway: allowed address %q: %w", a, err)
		}
	}
	cfg.Network = netseam.Or(cfg.Network)
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.MaxConnsPerClient <= 0 {
		cfg.MaxConnsPerClient = DefaultMaxConnsPerClient
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.NewSet()
	}
	ctx, stop := context.WithCancel(context.Background())
	s := &Server{cfg: cfg, allow: map[string]bool{}, slots: make(chan struct{}, cfg.MaxConns), per: map[string]int{}, ctx: ctx, stop: stop,
		mForwarded: cfg.Metrics.GetOrCreateCounter(`fogmesh_gateway_connections_total`),
		mRefused:   cfg.Metrics.GetOrCreateCounter(`fogmesh_gateway_refused_total`),
		mBytes:     cfg.Metrics.GetOrCreateCounter(`fogmesh_gateway_bytes_total`),
		mIdle:      cfg.Metrics.GetOrCreateCounter(`fogmesh_gateway_idle_closed_total`)}
	for _, a := range cfg.Allow {
		s.allow[a] = true
	}
	cfg.Metrics.GetOrCreateGauge(`fogmesh_gateway_connections_active`, func() float64 { return float64(len(s.slots)) })
	s.srv = &http.Server{Handler: http.HandlerFunc(s.connect), ReadHeaderTimeout: 5 * time.Second,
		ErrorLog: slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug)}
	return s, nil
}

// Serve forwards the CONNECT requests ln accepts until Close.
func (s *Server) Serve(ln net.Listener) error {
	err := s.srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Close stops accepting, ends every forwarded connection and waits.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.stop()
	err := s.srv.Close()
	s.wg.Wait()
	return err
}

func (s *Server) refuse(w http.ResponseWriter, code int, msg string, args ...any) {
	s.mRefused.Inc()
	for i, a := range args { // the client's words: a target or method may be 1 MiB long
		if v, ok := a.(string); ok && len(v) > maxLogged {
			args[i] = v[:maxLogged] + "…"
		}
	}
	s.cfg.Logger.Info("gateway: refused", append([]any{"why", msg}, args...)...)
	w.Header().Set("Connection", "close") // one request per connection
	// Nor wait for a body it declared: after the answer net/http reads up
	// to 256 KiB of it with no deadline, so a client that declares one and
	// sends nothing would hold the connection, outside every bound, for good.
	http.NewResponseController(w).SetReadDeadline(time.Unix(1, 0))
	http.Error(w, msg, code)
}

// maxLogged bounds each string a refusal logs.
const maxLogged = 256

// connect serves one CONNECT: an allowed address, a free slot, the dial;
// then 200 and the bytes both ways.
func (s *Server) connect(w http.ResponseWriter, r *http.Request) {
	// The handler is counted before Close can wait (under mu, with the
	// closed check): a handler still dialing when Close came would
	// otherwise Add its tunnel to wg after Close's Wait had returned, and
	// the tunnel would outlive Close.
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.refuse(w, http.StatusServiceUnavailable, "gateway closing")
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	if r.Method != http.MethodConnect {
		s.refuse(w, http.StatusMethodNotAllowed, "only CONNECT", "method", r.Method)
		return
	}
	target := r.Host
	if !s.allow[target] {
		s.refuse(w, http.StatusForbidden, "not a control plane or relay of this gateway", "target", target, "from", r.RemoteAddr)
		return
	}
	client, _, _ := net.SplitHostPort(r.RemoteAddr)
	s.mu.Lock()
	full := s.per[client] >= s.cfg.MaxConnsPerClient
	if !full {
		s.per[client]++
	}
	s.mu.Unlock()
	if full {
		s.refuse(w, http.StatusServiceUnavailable, "too many connections from this client", "client", client)
		return
	}
	unclient := func() {
		s.mu.Lock()
		if s.per[client]--; s.per[client] <= 0 {
			delete(s.per, client)
		}
		s.mu.Unlock()
	}
	select {
	case s.slots <- struct{}{}:
	default:
		unclient()
		s.refuse(w, http.StatusServiceUnavailable, "too many connections", "target", target)
		return
	}
	release := func() { <-s.slots; unclient() }
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.DialTimeout)
	up, err := s.cfg.Network.Dial(ctx, "tcp", target)
	cancel()
	if err != nil {
		release()
		s.refuse(w, http.StatusBadGateway, "dial failed", "target", target, "err", err)
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		release()
		up.Close()
		s.refuse(w, http.StatusInternalServerError, "cannot take the connection over")
		return
	}
	down, brw, err := hj.Hijack()
	if err != nil {
		release()
		up.Close()
		return
	}
	if _, err := down.Write([]byte("HTTP/1.1 200 Connection Established\r\n\r\n")); err != nil {
		release()
		up.Close()
		down.Close()
		return
	}
	s.mForwarded.Inc()
	s.wg.Add(1) // the handler's own count is held: wg is not zero
	go func() {
		defer s.wg.Done()
		defer release()
		var c net.Conn = down
		if n := brw.Reader.Buffered(); n > 0 { // the node wrote ahead of our answer
			c = &bufConn{Conn: down, r: brw.Reader}
		}
		a, b, err := proxy.RelayIdle(s.ctx, c, up, max(s.cfg.IdleTimeout, 0))
		s.mBytes.Add(int(a + b))
		if errors.Is(err, proxy.ErrIdle) {
			s.mIdle.Inc()
			s.cfg.Logger.Debug("gateway: idle connection closed", "target", target, "client", client, "idle", s.cfg.IdleTimeout)
		}
	}()
}

// bufConn reads what a bufio.Reader already holds before its Conn.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// Network reaches the Via addresses through the gateway at Gateway and
// every other address directly, through Base. It is a netseam.Network.
type Network struct {
	Gateway string
	Via     []string
	Base    netseam.Network
}

// Dial connects to addr, through the gateway when addr is one of Via.
func (n Network) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	base := netseam.Or(n.Base)
	if !slices.Contains(n.Via, addr) {
		return base.Dial(ctx, network, addr)
	}
	c, err := base.Dial(ctx, "tcp", n.Gateway)
	if err != nil {
		return nil, fmt.Errorf("gateway %s: %w", n.Gateway, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) }) // cancel ends the handshake
	defer stop()
	req := &http.Request{Method: http.MethodConnect, Host: addr, Header: http.Header{}}
	if _, err := fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", addr, addr); err != nil {
		c.Close()
		return nil, fmt.Errorf("gateway %s: %w", n.Gateway, err)
	}
	// The answer's head is bounded as net/http's Transport bounds a
	// proxy's: whoever answers at the gateway's address is not
	// authenticated, and a head without end would be read into memory.
	lr := &io.LimitedReader{R: c, N: maxAnswerHead}
	br := bufio.NewReader(lr)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		c.Close()
		if lr.N <= 0 {
			return nil, fmt.Errorf("gateway %s: CONNECT %s: answer head over %d bytes", n.Gateway, addr, maxAnswerHead)
		}
		return nil, fmt.Errorf("gateway %s: %w", n.Gateway, err)
	}
	// A 200's "body" is the tunnel: it is read through br, not Body.
	if resp.StatusCode != http.StatusOK {
		c.Close()
		return nil, fmt.Errorf("gateway %s: CONNECT %s: %s", n.Gateway, addr, resp.Status)
	}
	if !stop() { // cancelled as the answer came: its past deadline may land after the clear below
		c.Close()
		return nil, fmt.Errorf("gateway %s: %w", n.Gateway, context.Cause(ctx))
	}
	c.SetDeadline(time.Time{})
	if br.Buffered() > 0 {
		lr.N = math.MaxInt64 // what follows the head is the tunnel's
		return &bufConn{Conn: c, r: br}, nil
	}
	return c, nil
}

// maxAnswerHead bounds the gateway's answer to a CONNECT.
const maxAnswerHead = http.DefaultMaxHeaderBytes

// Listen is Base's.
func (n Network) Listen(ctx context.Context, network, addr string) (net.Listener, error) {
	return netseam.Or(n.Base).Listen(ctx, network, addr)
}
