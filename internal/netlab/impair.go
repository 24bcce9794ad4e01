package netlab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Network opens sockets somewhere: inside a namespace (*Netns) or on the
// host (Host). The impairment relays take one to listen and to dial on.
type Network interface {
	Listen(network, address string) (net.Listener, error)
	ListenPacket(network, address string) (net.PacketConn, error)
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// HostNetwork opens sockets in the test process's own namespace; tests
// that run without root use it on loopback.
var HostNetwork Network = hostNetwork{}

type hostNetwork struct{}

func (hostNetwork) Listen(network, address string) (net.Listener, error) {
	return net.Listen(network, address)
}

func (hostNetwork) ListenPacket(network, address string) (net.PacketConn, error) {
	return net.ListenPacket(network, address)
}

func (hostNetwork) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, address)
}

// Impairment is what a relay does to the traffic it forwards, since
// tc/netem is not available: a fixed one-way delay and random loss.
type Impairment struct {
	// Delay is added to every datagram (UDP) or every chunk read (TCP),
	// in each direction, so a round trip gains 2×Delay. Zero adds none.
	// Delay does not limit throughput: chunks are pipelined.
	Delay time.Duration
	// Loss is the probability, 0 to 1, that a datagram is dropped, in each
	// direction. UDP only: a TCP relay never drops bytes.
	Loss float64
	// Seed seeds the loss decisions, so a run can be repeated. Default 1.
	Seed uint64
	// Queue bounds the datagrams or chunks in flight per direction; more
	// are dropped (UDP) or wait (TCP). Default 1024.
	Queue int
}

func (imp *Impairment) validate() error {
	if imp.Delay < 0 {
		return fmt.Errorf("netlab: impairment delay %v is negative", imp.Delay)
	}
	if imp.Loss < 0 || imp.Loss > 1 {
		return fmt.Errorf("netlab: impairment loss %v is outside 0..1", imp.Loss)
	}
	if imp.Seed == 0 {
		imp.Seed = 1
	}
	if imp.Queue <= 0 {
		imp.Queue = 1024
	}
	return nil
}

// Stats counts what a relay did.
type Stats struct {
	Forwarded uint64 // datagrams or TCP chunks delivered
	Dropped   uint64 // datagrams dropped by Loss or a full queue
}

// Impairer is a running UDP or TCP impairment relay: whatever reaches Addr
// goes on to the target, and the answers come back, delayed and thinned
// as its Impairment says.
type Impairer struct {
	imp    Impairment
	target string
	n      Network
	addr   net.Addr

	forwarded, dropped atomic.Uint64

	mu   sync.Mutex // guards the following
	rng  *rand.Rand
	ln   net.Listener          // TCP
	pc   net.PacketConn        // UDP
	sess map[string]net.Conn   // UDP: client address → upstream socket
	tcp  map[net.Conn]struct{} // TCP: open connections, both sides
	done chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

// maxUDPSessions bounds the clients a UDP relay serves at once.
const maxUDPSessions = 1024

// ImpairUDP starts a UDP relay listening on listen (in n) that forwards
// each client's datagrams to target from an upstream socket of its own
// (also in n), and the answers back to that client.
func ImpairUDP(n Network, listen, target string, imp Impairment) (*Impairer, error) {
	if err := imp.validate(); err != nil {
		return nil, err
	}
	pc, err := n.ListenPacket("udp", listen)
	if err != nil {
		return nil, fmt.Errorf("netlab: impair udp: %w", err)
	}
	r := newImpairer(n, target, imp, pc.LocalAddr())
	r.pc = pc
	r.sess = make(map[string]net.Conn)
	down := r.startLine(func(p []byte, to net.Addr) error {
		_, err := pc.WriteTo(p, to)
		return err
	})
	r.wg.Add(1)
	go r.udpClientLoop(down)
	return r, nil
}

// ImpairTCP starts a TCP relay listening on listen (in n) that dials
// target (from n) for each connection it accepts and copies both ways,
// each chunk delayed by imp.Delay.
func ImpairTCP(n Network, listen, target string, imp Impairment) (*Impairer, error) {
	if err := imp.validate(); err != nil {
		return nil, err
	}
	ln, err := n.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("netlab: impair tcp: %w", err)
	}
	r := newImpairer(n, target, imp, ln.Addr())
	r.ln = ln
	r.tcp = make(map[net.Conn]struct{})
	r.wg.Add(1)
	go r.tcpAcceptLoop()
	return r, nil
}

func newImpairer(n Network, target string, imp Impairment, addr net.Addr) *Impairer {
	return &Impairer{
		imp: imp, target: target, n: n, addr: addr,
		rng:  rand.New(rand.NewPCG(imp.Seed, imp.Seed^0x9e3779b97f4a7c15)),
		done: make(chan struct{}),
	}
}

// Addr is where clients send to.
func (r *Impairer) Addr() net.Addr { return r.addr }

// Stats returns the counters so far.
func (r *Impairer) Stats() Stats {
	return Stats{Forwarded: r.forwarded.Load(), Dropped: r.dropped.Load()}
}

// Close stops the relay, closes every socket it opened and waits for its
// goroutines. It is idempotent.
func (r *Impairer) Close() error {
	r.once.Do(func() {
		close(r.done)
		r.mu.Lock()
		if r.pc != nil {
			r.pc.Close()
		}
		if r.ln != nil {
			r.ln.Close()
		}
		for _, c := range r.sess {
			c.Close()
		}
		for c := range r.tcp {
			c.Close()
		}
		r.mu.Unlock()
	})
	r.wg.Wait()
	return nil
}

func (r *Impairer) lose() bool {
	if r.imp.Loss == 0 {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rng.Float64() < r.imp.Loss
}

type datagram struct {
	due time.Time
	p   []byte
	to  net.Addr
}

// line is one direction of a UDP relay: a bounded queue of datagrams each
// sent when its delay has passed.
type line chan datagram

// startLine starts the goroutine that sends a direction's datagrams.
func (r *Impairer) startLine(send func(p []byte, to net.Addr) error) line {
	l := make(line, r.imp.Queue)
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		timer := time.NewTimer(time.Hour)
		defer timer.Stop()
		for {
			var d datagram
			select {
			case d = <-l:
			case <-r.done:
				return
			}
			if wait := time.Until(d.due); wait > 0 {
				timer.Reset(wait)
				select {
				case <-timer.C:
				case <-r.done:
					return
				}
			}
			if send(d.p, d.to) == nil {
				r.forwarded.Add(1)
			}
		}
	}()
	return l
}

// offer queues a datagram, or counts it dropped by loss or a full queue.
func (r *Impairer) offer(l line, p []byte, to net.Addr) {
	if r.lose() {
		r.dropped.Add(1)
		return
	}
	select {
	case l <- datagram{due: time.Now().Add(r.imp.Delay), p: p, to: to}:
	default:
		r.dropped.Add(1)
	}
}

// udpClientLoop reads clients' datagrams and queues them upstream.
func (r *Impairer) udpClientLoop(down line) {
	defer r.wg.Done()
	up := r.startLine(func(p []byte, to net.Addr) error {
		r.mu.Lock()
		c := r.sess[to.String()]
		r.mu.Unlock()
		if c == nil {
			return net.ErrClosed
		}
		_, err := c.Write(p)
		return err
	})
	buf := make([]byte, 64<<10)
	for {
		n, from, err := r.pc.ReadFrom(buf)
		if err != nil {
			return // closed
		}
		if _, err := r.session(from, down); err != nil {
			r.dropped.Add(1)
			continue
		}
		r.offer(up, append([]byte(nil), buf[:n]...), from)
	}
}

// session returns the upstream socket of a client, dialling it (and
// starting its reader) the first time.
func (r *Impairer) session(from net.Addr, down line) (net.Conn, error) {
	key := from.String()
	r.mu.Lock()
	c := r.sess[key]
	full := len(r.sess) >= maxUDPSessions
	r.mu.Unlock()
	if c != nil {
		return c, nil
	}
	if full {
		return nil, errors.New("netlab: impair udp: too many clients")
	}
	c, err := r.n.DialContext(context.Background(), "udp", r.target)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	select {
	case <-r.done:
		r.mu.Unlock()
		c.Close()
		return nil, net.ErrClosed
	default:
	}
	r.sess[key] = c
	r.wg.Add(1)
	r.mu.Unlock()
	go r.udpUpstreamLoop(c, from, down)
	return c, nil
}

// udpUpstreamLoop queues the target's answers back to one client.
func (r *Impairer) udpUpstreamLoop(c net.Conn, client net.Addr, down line) {
	defer r.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		if err != nil {
			select {
			case <-r.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // an ICMP error from the target: keep serving
		}
		r.offer(down, append([]byte(nil), buf[:n]...), client)
	}
}

func (r *Impairer) track(c net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	select {
	case <-r.done:
		c.Close()
		return false
	default:
	}
	r.tcp[c] = struct{}{}
	return true
}

func (r *Impairer) untrack(c net.Conn) {
	r.mu.Lock()
	delete(r.tcp, c)
	r.mu.Unlock()
	c.Close()
}

func (r *Impairer) tcpAcceptLoop() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return // closed
		}
		if !r.track(c) {
			return
		}
		r.wg.Add(1)
		go r.tcpConn(c)
	}
}

// tcpConn serves one client: dial the target and copy both ways.
func (r *Impairer) tcpConn(client net.Conn) {
	defer r.wg.Done()
	defer r.untrack(client)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	up, err := r.n.DialContext(ctx, "tcp", r.target)
	cancel()
	if err != nil {
		return
	}
	if !r.track(up) {
		return
	}
	defer r.untrack(up)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); r.delayedCopy(up, client) }()
	go func() { defer wg.Done(); r.delayedCopy(client, up) }()
	wg.Wait()
}

type chunk struct {
	due time.Time
	p   []byte // nil: the source ended
}

// delayedCopy copies src to dst, each chunk written Delay after it was
// read; a reader and a writer goroutine keep chunks pipelined. The end of
// src is passed on (CloseWrite) after the same delay.
func (r *Impairer) delayedCopy(dst, src net.Conn) {
	q := make(chan chunk, r.imp.Queue)
	r.wg.Add(1)
	go func() { // delayedCopyReader
		defer r.wg.Done()
		defer close(q)
		for {
			buf := make([]byte, 32<<10)
			n, err := src.Read(buf)
			if n > 0 {
				select {
				case q <- chunk{due: time.Now().Add(r.imp.Delay), p: buf[:n]}:
				case <-r.done:
					return
				}
			}
			if err != nil {
				if errors.Is(err, io.EOF) {
					select {
					case q <- chunk{due: time.Now().Add(r.imp.Delay)}:
					case <-r.done:
					}
				}
				return
			}
		}
	}()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for c := range q {
		if wait := time.Until(c.due); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-r.done:
				return
			}
		}
		if c.p == nil {
			if cw, ok := dst.(interface{ CloseWrite() error }); ok {
				cw.CloseWrite()
			}
			return
		}
		if _, err := dst.Write(c.p); err != nil {
			src.Close() // unblocks the reader
			for range q {
			}
			return
		}
		r.forwarded.Add(1)
	}
	dst.Close() // src failed without an orderly end: fail dst too
}
