// Package memnet is an in-memory netseam.Network for tests: agents and
// control planes whose mesh and sync links run over it need no port, and a
// test can cut a link (Reset) as a crashed peer would, without waiting for
// the kernel.
//
// Its connections behave like TCP where fogmesh relies on TCP: each
// direction is a bounded buffer (writes block when it is full), CloseWrite
// half-closes (the peer reads EOF and can still write back), deadlines fail
// blocked calls with an error that wraps os.ErrDeadlineExceeded and is a
// net.Error whose Timeout is true, Close unblocks the conn's own Read and
// Write with net.ErrClosed, and a dial to an address where nothing listens
// fails with syscall.ECONNREFUSED. They are not *net.TCPConn, so code that
// splices TCP to TCP falls back to copying.
package memnet

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/fogmesh/fogmesh/internal/netseam"
)

// bufSize is how many bytes one direction of a connection holds before a
// Write blocks: about a socket buffer.
const bufSize = 64 << 10

// Ephemeral ports for Listen on port 0 and for the dialing end of a
// connection, as Linux's default ip_local_port_range.
const (
	firstEphemeral = 32768
	lastEphemeral  = 60999
)

// Network is an in-memory network. The zero value is an empty network ready
// to use; it is safe for concurrent use.
type Network struct {
	mu        sync.Mutex // guards the following
	listeners map[string]*listener
	links     map[string]map[*link]struct{} // open connections by the listener address they were dialed to
	nextPort  int                           // next ephemeral port to try
	dialed    int                           // connections made, numbering the dialers' ports
}

var _ netseam.Network = (*Network)(nil)

// Addr is a memnet address: "host:port" as given to Listen or Dial, with an
// IP host in its canonical form.
type Addr string

// Network returns "memnet".
func (Addr) Network() string { return "memnet" }

func (a Addr) String() string { return string(a) }

// checkNetwork accepts the stream networks of the net package.
func checkNetwork(op, network string) error {
	switch network {
	case "tcp", "tcp4", "tcp6":
		return nil
	}
	return fmt.Errorf("memnet: %s: network %q not supported (only tcp)", op, network)
}

// splitAddr parses "host:port"; an IP host is written canonically so that
// "[::1]:80" and "[0:0::1]:80" are one address.
func splitAddr(op, addr string) (host string, port int, err error) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("memnet: %s: %w", op, err)
	}
	port, err = strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("memnet: %s %q: bad port %q", op, addr, p)
	}
	if ip, err := netip.ParseAddr(h); err == nil {
		h = ip.String()
	}
	return h, port, nil
}

func join(host string, port int) string { return net.JoinHostPort(host, strconv.Itoa(port)) }

// wildcard reports whether host listens on every address of its port.
func wildcard(host string) bool { return host == "" || host == "0.0.0.0" || host == "::" }

// Listen binds addr ("host:port"; port 0 picks a free ephemeral port). A
// host of "", 0.0.0.0 or :: receives dials to any host at its port. A bound
// address, or a port a wildcard listener holds, fails with
// syscall.EADDRINUSE.
func (n *Network) Listen(ctx context.Context, network, addr string) (net.Listener, error) {
	if err := checkNetwork("listen", network); err != nil {
		return nil, err
	}
	host, port, err := splitAddr("listen", addr)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, &net.OpError{Op: "listen", Net: "memnet", Addr: Addr(addr), Err: err}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.listeners == nil {
		n.listeners = map[string]*listener{}
		n.links = map[string]map[*link]struct{}{}
	}
	if port == 0 {
		port = n.freePortLocked(host)
	}
	if port == 0 || n.inUseLocked(host, port) {
		return nil, &net.OpError{Op: "listen", Net: "memnet", Addr: Addr(addr), Err: os.NewSyscallError("bind", syscall.EADDRINUSE)}
	}
	l := &listener{n: n, addr: Addr(join(host, port)), changed: make(chan struct{})}
	n.listeners[string(l.addr)] = l
	return l, nil
}

// freePortLocked returns an ephemeral port free on host, 0 if none is.
func (n *Network) freePortLocked(host string) int {
	for range lastEphemeral - firstEphemeral + 1 {
		if n.nextPort < firstEphemeral || n.nextPort > lastEphemeral {
			n.nextPort = firstEphemeral
		}
		p := n.nextPort
		n.nextPort++
		if !n.inUseLocked(host, p) {
			return p
		}
	}
	return 0
}

func (n *Network) inUseLocked(host string, port int) bool {
	for _, l := range n.listeners {
		h, p, _ := splitAddr("", string(l.addr))
		if p == port && (h == host || wildcard(h) || wildcard(host)) {
			return true
		}
	}
	return false
}

// lookupLocked finds the listener a dial to host:port reaches.
func (n *Network) lookupLocked(host string, port int) *listener {
	if l := n.listeners[join(host, port)]; l != nil {
		return l
	}
	for _, w := range []string{"", "0.0.0.0", "::"} {
		if l := n.listeners[join(w, port)]; l != nil {
			return l
		}
	}
	return nil
}

// Dial connects to the listener at addr. With none there it fails at once
// with an error wrapping syscall.ECONNREFUSED. The connection is queued for
// Accept (the queue has no limit), so Dial does not wait for the listener.
func (n *Network) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if err := checkNetwork("dial", network); err != nil {
		return nil, err
	}
	host, port, err := splitAddr("dial", addr)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, &net.OpError{Op: "dial", Net: "memnet", Addr: Addr(addr), Err: err}
	}
	refused := &net.OpError{Op: "dial", Net: "memnet", Addr: Addr(addr), Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	n.mu.Lock()
	l := n.lookupLocked(host, port)
	if l == nil {
		n.mu.Unlock()
		return nil, refused
	}
	n.dialed++
	from := Addr(join("memnet-dialer", firstEphemeral+n.dialed%(lastEphemeral-firstEphemeral+1)))
	to := Addr(join(host, port))
	lk := newLink(n, string(l.addr), from, to)
	if n.links[lk.key] == nil {
		n.links[lk.key] = map[*link]struct{}{}
	}
	n.links[lk.key][lk] = struct{}{}
	n.mu.Unlock()

	if !l.enqueue(lk.server) {
		lk.reset()
		return nil, refused
	}
	return lk.client, nil
}

// Reset closes the listener at addr (as its Addr reports it), if any, and
// resets every open connection that was dialed to it: reads and writes at
// both ends then fail with an error wrapping syscall.ECONNRESET, as after a
// TCP reset from a peer that crashed. It returns how many connections it
// reset.
func (n *Network) Reset(addr string) int {
	host, port, err := splitAddr("reset", addr)
	if err != nil {
		return 0
	}
	key := join(host, port)
	n.mu.Lock()
	l := n.listeners[key]
	var links []*link
	for lk := range n.links[key] {
		links = append(links, lk)
	}
	n.mu.Unlock()
	if l != nil {
		l.Close()
	}
	for _, lk := range links {
		lk.reset()
	}
	return len(links)
}

// Conns returns how many connections dialed to addr (as the listener's Addr
// reports it) are open at one end at least.
func (n *Network) Conns(addr string) int {
	host, port, err := splitAddr("conns", addr)
	if err != nil {
		return 0
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.links[join(host, port)])
}

// listener is a bound address whose dialed connections wait for Accept.
type listener struct {
	n    *Network
	addr Addr

	mu      sync.Mutex // guards the following
	closed  bool
	backlog []*conn
	changed chan struct{} // closed and replaced when backlog or closed changes
}

// enqueue queues c for Accept; false when the listener is closed.
func (l *listener) enqueue(c *conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.backlog = append(l.backlog, c)
	close(l.changed)
	l.changed = make(chan struct{})
	return true
}

// Accept returns the next dialed connection; after Close it fails with an
// error wrapping net.ErrClosed.
func (l *listener) Accept() (net.Conn, error) {
	for {
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			return nil, &net.OpError{Op: "accept", Net: "memnet", Addr: l.addr, Err: net.ErrClosed}
		}
		if len(l.backlog) > 0 {
			c := l.backlog[0]
			l.backlog[0] = nil
			l.backlog = l.backlog[1:]
			l.mu.Unlock()
			return c, nil
		}
		ch := l.changed
		l.mu.Unlock()
		<-ch
	}
}

// Close unbinds the address, so later dials are refused, unblocks Accept
// and resets the connections still waiting to be accepted. Connections
// already accepted stay open.
func (l *listener) Close() error {
	l.n.mu.Lock()
	if l.n.listeners[string(l.addr)] == l {
		delete(l.n.listeners, string(l.addr))
	}
	l.n.mu.Unlock()
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return &net.OpError{Op: "close", Net: "memnet", Addr: l.addr, Err: net.ErrClosed}
	}
	l.closed = true
	queued := l.backlog
	l.backlog = nil
	close(l.changed)
	l.changed = make(chan struct{})
	l.mu.Unlock()
	for _, c := range queued {
		c.link.reset()
	}
	return nil
}

func (l *listener) Addr() net.Addr { return l.addr }

// link is one connection: two pipes and the two conns that use them.
type link struct {
	n              *Network
	key            string // the listener address it was dialed to
	client, server *conn
	open           atomic.Int32 // ends not yet closed
}

func newLink(n *Network, key string, from, to Addr) *link {
	up, down := newPipe(), newPipe() // client to server, server to client
	lk := &link{n: n, key: key}
	lk.client = &conn{link: lk, local: from, remote: to, rd: down, wr: up}
	lk.server = &conn{link: lk, local: to, remote: from, rd: up, wr: down}
	for _, c := range []*conn{lk.client, lk.server} {
		c.rdl.init()
		c.wdl.init()
	}
	lk.open.Store(2)
	return lk
}

// reset fails both directions with ECONNRESET.
func (lk *link) reset() {
	lk.client.rd.fail()
	lk.client.wr.fail()
	lk.forget()
}

// endClosed is called once per end by Close; the link is forgotten when
// both ends are closed.
func (lk *link) endClosed() {
	if lk.open.Add(-1) == 0 {
		lk.forget()
	}
}

func (lk *link) forget() {
	lk.n.mu.Lock()
	delete(lk.n.links[lk.key], lk)
	lk.n.mu.Unlock()
}
