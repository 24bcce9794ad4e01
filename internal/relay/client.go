package relay

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/fogmesh/fogmesh/internal/identity"
)

// Client is an agent's connection to one relay: the control connection
// (Hello, candidates, introductions, incoming sessions) and the data
// connections it opens per relayed session. Agents will use it for their
// relayed path (issue 12); today tests and tools do.
type Client struct {
	addr   string
	tls    *tls.Config // with NextProtos left to the client
	dialTo DialFunc    // nil: net.Dialer
	conn   *tls.Conn
	// hello is the relay's first frame.
	hello Hello

	wmu sync.Mutex // serialises frame writes

	introductions chan Introduced
	incoming      chan Incoming
	udpIn         chan UDPIncoming
	done          chan struct{}

	mu       sync.Mutex // guards the following
	waiters  map[string]chan result
	err      error
	udpOpts  UDPOptions
	udpChans map[[udpChanIDLen]byte]*UDPChannel
	udpDone  bool // the connection ended: no new channel
}

type result struct {
	intro Introduced
	bound *UDPBound
	err   error
}

// clientQueue is the depth of the Introductions and Incoming channels; a
// frame that finds its channel full is dropped (the peer retries).
const clientQueue = 64

// DialClient opens the control connection to the relay at addr with
// tlsConf (a mesh mTLS client configuration, for example
// identity.Source.ClientConfig(AuthorizeRelay(td))) and reads Hello.
func DialClient(ctx context.Context, addr string, tlsConf *tls.Config) (*Client, error) {
	return DialClientVia(ctx, addr, tlsConf, nil)
}

// DialFunc opens a TCP connection; its signature fits net.Dialer and
// netlab's Netns.DialContext.
type DialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// DialClientVia is DialClient with the TCP connections (control and data)
// opened by dial; nil dials with a net.Dialer. Tests use it to connect
// from inside a network namespace.
func DialClientVia(ctx context.Context, addr string, tlsConf *tls.Config, dial DialFunc) (*Client, error) {
	c := &Client{addr: addr, tls: tlsConf, dialTo: dial, introductions: make(chan Introduced, clientQueue),
		incoming: make(chan Incoming, clientQueue), udpIn: make(chan UDPIncoming, clientQueue), done: make(chan struct{}),
		waiters: map[string]chan result{}, udpChans: map[[udpChanIDLen]byte]*UDPChannel{}}
	conn, err := c.dial(ctx, ALPNControl)
	if err != nil {
		return nil, err
	}
	f, err := readFrameCtx(ctx, conn)
	if err == nil {
		err = f.Decode(&c.hello)
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("relay %s: hello: %w", addr, err)
	}
	c.conn = conn
	go c.readLoop()
	return c, nil
}

func (c *Client) dial(ctx context.Context, alpn string) (*tls.Conn, error) {
	cfg := c.tls.Clone()
	cfg.NextProtos = []string{alpn}
	if c.dialTo == nil {
		d := tls.Dialer{Config: cfg}
		conn, err := d.DialContext(ctx, "tcp", c.addr)
		if err != nil {
			return nil, fmt.Errorf("relay %s: %w", c.addr, err)
		}
		return conn.(*tls.Conn), nil
	}
	raw, err := c.dialTo(ctx, "tcp", c.addr)
	if err != nil {
		return nil, fmt.Errorf("relay %s: %w", c.addr, err)
	}
	if cfg.ServerName == "" && !cfg.InsecureSkipVerify {
		if host, _, err := net.SplitHostPort(c.addr); err == nil {
			cfg.ServerName = host
		}
	}
	conn := tls.Client(raw, cfg)
	if err := conn.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("relay %s: handshake: %w", c.addr, err)
	}
	return conn, nil
}

// Addr is the relay's address as given to DialClient.
func (c *Client) Addr() string { return c.addr }

// readFrameCtx reads one frame, giving up when ctx is done.
func readFrameCtx(ctx context.Context, conn net.Conn) (Frame, error) {
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	f, err := ReadFrame(conn)
	if err != nil && ctx.Err() != nil {
		return f, ctx.Err()
	}
	if !stop() {
		conn.SetReadDeadline(time.Time{})
	}
	return f, err
}

// Hello returns the relay's greeting: the agent's identity as the relay
// saw it, its observed TCP address and its UDP token.
func (c *Client) Hello() Hello { return c.hello }

// Introductions delivers introductions other agents asked for.
func (c *Client) Introductions() <-chan Introduced { return c.introductions }

// Incoming delivers sessions other agents dialed; take one with
// AcceptSession.
func (c *Client) Incoming() <-chan Incoming { return c.incoming }

// Done is closed when the control connection ends; Err says why.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err is why the control connection ended (nil while open or after Close).
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close closes the control connection and waits for its reader.
func (c *Client) Close() error {
	c.conn.Close()
	<-c.done
	return nil
}

// readLoop is the control connection's reader.
func (c *Client) readLoop() {
	var err error
	defer func() {
		c.mu.Lock()
		if !errors.Is(err, net.ErrClosed) {
			c.err = err
		}
		for k, w := range c.waiters {
			w <- result{err: fmt.Errorf("relay %s: connection closed: %w", c.addr, err)}
			delete(c.waiters, k)
		}
		c.mu.Unlock()
		c.conn.Close()
		c.closeUDPAll(err)
		close(c.done)
	}()
	for {
		var f Frame
		f, err = ReadFrame(c.conn)
		if err != nil {
			return
		}
		switch f.Type {
		case TypeIntroduced:
			var m Introduced
			if err = f.Decode(&m); err != nil {
				return
			}
			if !c.answer(m.Nonce, result{intro: m}) {
				select {
				case c.introductions <- m:
				default:
				}
			}
		case TypeError:
			var m Error
			if err = f.Decode(&m); err != nil {
				return
			}
			c.answer(m.Nonce, result{err: &m})
		case TypePong:
			var m Pong
			if err = f.Decode(&m); err != nil {
				return
			}
			c.answer(m.ID, result{})
		case TypeIncoming:
			var m Incoming
			if err = f.Decode(&m); err != nil {
				return
			}
			select {
			case c.incoming <- m:
			default:
			}
		case TypeUDPBound:
			var m UDPBound
			if err = f.Decode(&m); err != nil {
				return
			}
			c.udpBound(&m)
		case TypeUDPClose:
			var m UDPClose
			if err = f.Decode(&m); err != nil {
				return
			}
			c.udpClosed(&m)
		default:
			err = &FrameError{Reason: ReasonUnexpected, Err: fmt.Errorf("type %d on the control connection", f.Type)}
			return
		}
	}
}

// answer hands r to the Introduce waiting for nonce, if any.
func (c *Client) answer(nonce string, r result) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	w := c.waiters[nonce]
	if w == nil {
		return false
	}
	delete(c.waiters, nonce)
	w <- r
	return true
}

func (c *Client) write(t byte, msg any) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return WriteFrame(c.conn, t, msg)
}

// SetCandidates tells the relay the agent's own addresses (host:port),
// given to the peers it is introduced to.
func (c *Client) SetCandidates(cands []string) error {
	m := &Candidates{Candidates: cands}
	if err := m.check(); err != nil {
		return fmt.Errorf("relay: candidates: %w", err)
	}
	return c.write(TypeCandidates, m)
}

// Introduce asks the relay to introduce this agent to peer (a node SPIFFE
// ID) with cands, and returns the peer's candidates. A refusal is an
// *Error.
func (c *Client) Introduce(ctx context.Context, peer string, cands []string) (Introduced, error) {
	return c.introduce(ctx, &Introduce{Nonce: newID(), Time: time.Now().UnixMilli(), Peer: peer, Candidates: cands})
}

func (c *Client) introduce(ctx context.Context, m *Introduce) (Introduced, error) {
	w := make(chan result, 1)
	c.mu.Lock()
	c.waiters[m.Nonce] = w
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.waiters, m.Nonce)
		c.mu.Unlock()
	}()
	if err := c.write(TypeIntroduce, m); err != nil {
		return Introduced{}, fmt.Errorf("relay %s: introduce: %w", c.addr, err)
	}
	select {
	case r := <-w:
		return r.intro, r.err
	case <-ctx.Done():
		return Introduced{}, ctx.Err()
	}
}

// Ping sends a keepalive and returns the round-trip time to the relay
// (for choosing the nearest of several relays).
func (c *Client) Ping(ctx context.Context) (time.Duration, error) {
	id := newID()
	w := make(chan result, 1)
	c.mu.Lock()
	c.waiters[id] = w
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.waiters, id)
		c.mu.Unlock()
	}()
	start := time.Now()
	if err := c.write(TypePing, &Ping{ID: id}); err != nil {
		return 0, fmt.Errorf("relay %s: ping: %w", c.addr, err)
	}
	select {
	case r := <-w:
		return time.Since(start), r.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// KeepAlive pings every interval until ctx is done or the connection
// ends, so the relay (and NATs on the way) keep the connection. Run it
// with go; it returns when the connection ends or ctx is done.
func (c *Client) KeepAlive(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.done:
			return
		case <-t.C:
			if err := c.write(TypePing, &Ping{ID: newID()}); err != nil {
				return
			}
		}
	}
}

// DialPeer opens a relayed session to peer: a new data connection, ready
// for the agents' own end-to-end TLS once it returns. A refusal is an
// *Error.
func (c *Client) DialPeer(ctx context.Context, peer string) (net.Conn, error) {
	return c.openData(ctx, TypeDial, &Dial{Peer: peer})
}

// AcceptSession opens this agent's side of an Incoming session.
func (c *Client) AcceptSession(ctx context.Context, session string) (net.Conn, error) {
	return c.openData(ctx, TypeAccept, &Accept{Session: session})
}

func (c *Client) openData(ctx context.Context, t byte, msg any) (net.Conn, error) {
	conn, err := c.dial(ctx, ALPNData)
	if err != nil {
		return nil, err
	}
	if err := WriteFrame(conn, t, msg); err != nil {
		conn.Close()
		return nil, fmt.Errorf("relay %s: %w", c.addr, err)
	}
	f, err := readFrameCtx(ctx, conn)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("relay %s: %w", c.addr, err)
	}
	switch f.Type {
	case TypeReady:
		var m Ready
		if err := f.Decode(&m); err != nil {
			conn.Close()
			return nil, fmt.Errorf("relay %s: %w", c.addr, err)
		}
		return conn, nil
	case TypeError:
		var m Error
		conn.Close()
		if err := f.Decode(&m); err != nil {
			return nil, fmt.Errorf("relay %s: %w", c.addr, err)
		}
		return nil, &m
	}
	conn.Close()
	return nil, fmt.Errorf("relay %s: unexpected frame type %d on a data connection", c.addr, f.Type)
}

// UDPReflexive asks the relay's UDP port (relayUDP) which address pc has
// as seen from outside. It sends up to attempts requests, one per wait.
// ctx cuts the wait in progress short (an answer read after ctx is done is
// dropped), and pc is left with no read deadline, so whatever reads pc
// next (a QUIC transport) does not inherit one.
func (c *Client) UDPReflexive(ctx context.Context, pc net.PacketConn, relayUDP net.Addr) (netip.AddrPort, error) {
	req, err := AppendUDPRequest(nil, c.hello.UDPToken)
	if err != nil {
		return netip.AddrPort{}, err
	}
	// done guards the read deadline between the loop and ctx's callback:
	// once ctx is done no attempt sets a future deadline again.
	var mu sync.Mutex
	done := false
	setDeadline := func(t time.Time) bool {
		mu.Lock()
		defer mu.Unlock()
		if !done {
			pc.SetReadDeadline(t)
		}
		return !done
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(fired)
		mu.Lock()
		defer mu.Unlock()
		done = true
		pc.SetReadDeadline(time.Unix(1, 0)) // wakes the ReadFrom in progress
	})
	defer func() {
		if !stop() {
			<-fired
		}
		pc.SetReadDeadline(time.Time{})
	}()
	buf := make([]byte, udpMaxPacket)
	const attempts = 20
	for i := 0; i < attempts; i++ {
		if _, err := pc.WriteTo(req, relayUDP); err != nil {
			return netip.AddrPort{}, fmt.Errorf("relay: udp: %w", err)
		}
		if !setDeadline(time.Now().Add(500 * time.Millisecond)) {
			return netip.AddrPort{}, ctx.Err()
		}
		for {
			n, _, err := pc.ReadFrom(buf)
			if ctx.Err() != nil {
				return netip.AddrPort{}, ctx.Err()
			}
			if err != nil {
				break // timeout: send again
			}
			if ap, err := ParseUDPAnswer(buf[:n], c.hello.UDPToken); err == nil {
				return ap, nil
			}
		}
	}
	return netip.AddrPort{}, errors.New("relay: udp: no answer")
}

// AuthorizeRelay is how an agent authorises a relay's certificate: a
// relay identity of the mesh's trust domain td (spiffe://<td>/relay/<name>,
// what `fogmesh relay -join-token` obtains) or, for relays run from files,
// a node identity of td. A workload, admin or control plane certificate of
// the mesh CA is not a relay.
func AuthorizeRelay(td spiffeid.TrustDomain) tlsconfig.Authorizer {
	return func(id spiffeid.ID, _ [][]*x509.Certificate) error {
		if !id.MemberOf(td) {
			return fmt.Errorf("relay %s is not in trust domain %s", id, td)
		}
		if _, ok := identity.ParseRelayID(id); ok {
			return nil
		}
		if _, _, ok := identity.ParseNodeID(id); ok {
			return nil
		}
		return fmt.Errorf("%s is not a relay or node identity", id)
	}
}
