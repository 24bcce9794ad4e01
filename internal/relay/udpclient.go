package relay

// The agent's side of UDP channels (udpchan.go): a UDPChannel is a
// net.PacketConn over a dedicated local UDP socket that carries QUIC to
// one peer through the relay.
//
// How the path manager uses it (for a peer that cannot be punched, from a
// site that lets UDP out):
//
//   - The side that wants a path calls Client.BindUDP(ctx, peer) (or
//     Pool.BindUDP); the peer's agent receives the channel on
//     Client.UDPIncoming (Pool.UDPIncoming) and calls Open on it. Both
//     calls return once the relay answered a keepalive on the channel's
//     socket, so a site whose UDP is blocked fails here, within ctx, and
//     falls back to a relayed TCP session (DialPeer).
//   - Each side runs the mesh over QUIC on its channel exactly as on a
//     punched socket: one quic.Transport (transport.NewQUICTransport(ch)),
//     a QUICServer and a QUICClient on it. A side dials the other at
//     ch.PeerAddr() (the relay's UDP address, fixed for the channel) and
//     checks the peer's identity against ch.Peer() (QUICClientConfig.
//     PeerID); the binder dials first, and since QUIC is end to end the
//     relay cannot read or forge the streams. Call WaitPeer before the
//     first dial: until the relay has seen the other side, it drops data
//     (QUIC would retransmit, but later).
//   - The channel ends (Done, Err) when either agent closes it, the relay
//     closes it (idle for its UDPIdleTimeout, a side's control connection
//     lost) or the control connection ends; the QUIC connection over it
//     then times out, and the path manager binds a new one or falls back.
//     Close the quic.Transport before the channel.
//
// Each datagram to the relay carries UDPChannelOverhead bytes more; quic-go
// keeps its 1280-byte packets on a PacketConn that is not a *net.UDPConn
// (no path MTU discovery), so a channel fits any path MTU of 1400 bytes.

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of UDPOptions.
const (
	DefaultUDPKeepAlive = 10 * time.Second
	DefaultUDPQueue     = 256
	// udpFastKeepAlive is how often a channel sends keepalives until the
	// relay says the other side is there.
	udpFastKeepAlive = 200 * time.Millisecond
)

// ErrUDPChannelClosed is the error of a UDPChannel used after it closed;
// Err wraps it with why.
var ErrUDPChannelClosed = errors.New("relay: udp channel closed")

// UDPOptions configure a Client's UDP channels.
type UDPOptions struct {
	// ListenPacket opens each channel's local UDP socket (default
	// net.ListenPacket); it is called with "udp4" or "udp6" and ":0".
	// Tests pass a network namespace's.
	ListenPacket func(network, address string) (net.PacketConn, error)
	// KeepAlive is how often a channel sends a keepalive to the relay
	// once the other side is there: it holds the NAT mapping and the
	// relay's channel (default DefaultUDPKeepAlive, below common 30 s NAT
	// timeouts and the relay's UDPIdleTimeout).
	KeepAlive time.Duration
	// Queue is how many received datagrams wait for ReadFrom; more are
	// dropped, as a socket buffer would (default DefaultUDPQueue).
	Queue int
}

// SetUDPOptions sets the options of channels bound or opened from now on.
func (c *Client) SetUDPOptions(o UDPOptions) {
	c.mu.Lock()
	c.udpOpts = o
	c.mu.Unlock()
}

// UDPIncoming is a UDP channel another agent bound to this one; Open it
// to take part (or ignore it: the relay closes it after its
// AcceptTimeout).
type UDPIncoming struct {
	// Peer is the binder's SPIFFE ID, Channel the channel ID.
	Peer, Channel string
	bound         UDPBound
	c             *Client
}

// Open opens this agent's side of the channel (see BindUDP).
func (in UDPIncoming) Open(ctx context.Context) (*UDPChannel, error) {
	if in.c == nil {
		return nil, errors.New("relay: udp incoming: not from a client")
	}
	return in.c.openUDP(ctx, in.bound)
}

// UDPIncoming delivers the UDP channels other agents bind to this one
// (full channel: the channel is closed at once, and the binder's WaitPeer
// fails).
func (c *Client) UDPIncoming() <-chan UDPIncoming { return c.udpIn }

// BindUDP asks the relay for a UDP channel to peer (a node SPIFFE ID) and
// opens this side of it: a new local UDP socket, sending keepalives to
// the relay's UDP port. It returns once the relay answered one (a site
// that drops UDP gets ctx's error). A refusal is an *Error. The peer
// gets the channel on its UDPIncoming. See the top of udpclient.go for
// how a path manager uses it.
func (c *Client) BindUDP(ctx context.Context, peer string) (*UDPChannel, error) {
	m := &UDPBind{Nonce: newID(), Peer: peer}
	w := make(chan result, 1)
	c.mu.Lock()
	c.waiters[m.Nonce] = w
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.waiters, m.Nonce)
		c.mu.Unlock()
	}()
	if err := c.write(TypeUDPBind, m); err != nil {
		return nil, fmt.Errorf("relay %s: udp bind: %w", c.addr, err)
	}
	select {
	case r := <-w:
		if r.err != nil {
			return nil, r.err
		}
		return c.openUDP(ctx, *r.bound)
	case <-ctx.Done():
		return nil, fmt.Errorf("relay %s: udp bind %s: %w", c.addr, peer, ctx.Err())
	}
}

// openUDP opens this side of the channel b.
func (c *Client) openUDP(ctx context.Context, b UDPBound) (*UDPChannel, error) {
	key, err := hex.DecodeString(b.Key)
	if err != nil {
		return nil, fmt.Errorf("relay %s: udp channel key: %w", c.addr, err)
	}
	host, _, err := net.SplitHostPort(c.addr)
	if err != nil {
		return nil, fmt.Errorf("relay %s: %w", c.addr, err)
	}
	ra, err := net.ResolveUDPAddr("udp", net.JoinHostPort(host, strconv.Itoa(b.Port)))
	if err != nil {
		return nil, fmt.Errorf("relay %s: udp address: %w", c.addr, err)
	}
	c.mu.Lock()
	o := c.udpOpts
	c.mu.Unlock()
	if o.ListenPacket == nil {
		o.ListenPacket = net.ListenPacket
	}
	if o.KeepAlive <= 0 {
		o.KeepAlive = DefaultUDPKeepAlive
	}
	if o.Queue <= 0 {
		o.Queue = DefaultUDPQueue
	}
	network := "udp6"
	if ra.IP.To4() != nil {
		network = "udp4"
	}
	pc, err := o.ListenPacket(network, ":0")
	if err != nil {
		return nil, fmt.Errorf("relay %s: udp channel socket: %w", c.addr, err)
	}
	ap := ra.AddrPort()
	ch := &UDPChannel{c: c, pc: pc, relay: ra, relayAP: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()),
		hexID: b.Channel, side: byte(b.Side), peer: b.Peer, keep: o.KeepAlive,
		mac: hmac.New(sha256.New, key), rmac: hmac.New(sha256.New, key),
		queue: make(chan []byte, o.Queue), ready: make(chan struct{}), peerReady: make(chan struct{}),
		closing: make(chan struct{}), wake: make(chan struct{})}
	hex.Decode(ch.id[:], []byte(b.Channel))
	c.mu.Lock()
	if c.udpDone {
		c.mu.Unlock()
		pc.Close()
		return nil, fmt.Errorf("relay %s: udp channel: %w", c.addr, net.ErrClosed)
	}
	c.udpChans[ch.id] = ch
	c.mu.Unlock()
	ch.wg.Add(2)
	go ch.readLoop()
	go ch.keepLoop()
	select {
	case <-ch.ready:
		return ch, nil
	case <-ch.closing:
		ch.wg.Wait()
		return nil, ch.Err()
	case <-ctx.Done():
		ch.Close()
		return nil, fmt.Errorf("relay %s: udp channel to %s: no answer from the relay's UDP port %s (UDP blocked?): %w",
			c.addr, b.Peer, ra, ctx.Err())
	}
}

// udpClosed handles the relay's UDPClose.
func (c *Client) udpClosed(m *UDPClose) {
	var id [udpChanIDLen]byte
	hex.Decode(id[:], []byte(m.Channel))
	c.mu.Lock()
	ch := c.udpChans[id]
	c.mu.Unlock()
	if ch != nil {
		ch.shut(fmt.Errorf("%w by the relay: %s", ErrUDPChannelClosed, m.Reason), false)
	}
}

// udpBound handles the relay's UDPBound: the answer to a BindUDP, or an
// incoming channel. One nobody takes is closed at once.
func (c *Client) udpBound(m *UDPBound) {
	if m.Nonce != "" {
		if c.answer(m.Nonce, result{bound: m}) {
			return
		}
	} else {
		select {
		case c.udpIn <- UDPIncoming{Peer: m.Peer, Channel: m.Channel, bound: *m, c: c}:
			return
		default:
		}
	}
	c.write(TypeUDPClose, &UDPClose{Channel: m.Channel, Reason: "not taken"})
}

// closeUDPAll closes every channel: the control connection ended.
func (c *Client) closeUDPAll(err error) {
	c.mu.Lock()
	c.udpDone = true
	var chans []*UDPChannel
	for _, ch := range c.udpChans {
		chans = append(chans, ch)
	}
	c.mu.Unlock()
	for _, ch := range chans {
		ch.shut(fmt.Errorf("%w: relay connection ended: %v", ErrUDPChannelClosed, err), false)
	}
}

// UDPChannel is one side of a UDP channel through the relay: a
// net.PacketConn whose only peer is the other agent, seen at PeerAddr.
// WriteTo seals a datagram to the relay whatever the address; ReadFrom
// returns the other side's datagrams. It is safe for concurrent use.
type UDPChannel struct {
	c       *Client
	pc      net.PacketConn
	relay   *net.UDPAddr
	relayAP netip.AddrPort
	id      [udpChanIDLen]byte
	hexID   string
	side    byte
	peer    string
	keep    time.Duration

	seq   atomic.Uint64
	macMu sync.Mutex
	mac   hash.Hash // for WriteTo and keepalives, under macMu
	rmac  hash.Hash // for answers, by readLoop only

	queue     chan []byte
	ready     chan struct{} // closed at the relay's first answer
	peerReady chan struct{} // closed when the relay knows the other side
	readyOnce sync.Once
	peerOnce  sync.Once
	closing   chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
	dropped   atomic.Uint64
	slow      atomic.Bool // keepLoop is past the fast keepalives (tests)

	dmu      sync.Mutex // guards deadline and wake
	deadline time.Time
	wake     chan struct{} // closed and replaced when the deadline changes

	emu sync.Mutex
	err error
}

var udpBufs = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

// Peer is the other agent's SPIFFE ID.
func (ch *UDPChannel) Peer() string { return ch.peer }

// Channel is the channel ID (the same on both sides).
func (ch *UDPChannel) Channel() string { return ch.hexID }

// Binder reports whether this side bound the channel (it dials QUIC
// first; the other side opened it from UDPIncoming).
func (ch *UDPChannel) Binder() bool { return ch.side == 0 }

// PeerAddr is the address the other agent appears at on this channel:
// the relay's UDP address. Dial QUIC to it.
func (ch *UDPChannel) PeerAddr() net.Addr { return ch.relay }

// LocalAddr is the channel's local socket's address.
func (ch *UDPChannel) LocalAddr() net.Addr { return ch.pc.LocalAddr() }

// Done is closed when the channel closes; Err says why.
func (ch *UDPChannel) Done() <-chan struct{} { return ch.closing }

// Err is why the channel closed (nil while open).
func (ch *UDPChannel) Err() error {
	ch.emu.Lock()
	defer ch.emu.Unlock()
	return ch.err
}

// Dropped counts datagrams dropped on the way in: not from the relay,
// not of this channel, badly framed, or over the queue.
func (ch *UDPChannel) Dropped() uint64 { return ch.dropped.Load() }

// WaitPeer waits until the relay has seen the other side, so data sent
// from now on is forwarded.
func (ch *UDPChannel) WaitPeer(ctx context.Context) error {
	select {
	case <-ch.peerReady:
		return nil
	case <-ch.closing:
		return ch.Err()
	case <-ctx.Done():
		return fmt.Errorf("relay: udp channel to %s: the peer did not come: %w", ch.peer, ctx.Err())
	}
}

// Close closes the channel, tells the relay, and waits for its
// goroutines. It is idempotent.
func (ch *UDPChannel) Close() error {
	ch.shut(fmt.Errorf("%w by this agent", ErrUDPChannelClosed), true)
	ch.wg.Wait()
	return nil
}

// shut closes the channel once with err; tell sends UDPClose to the
// relay. It does not wait (readLoop calls it).
func (ch *UDPChannel) shut(err error, tell bool) {
	ch.closeOnce.Do(func() {
		ch.emu.Lock()
		ch.err = err
		ch.emu.Unlock()
		close(ch.closing)
		ch.pc.Close()
		ch.c.mu.Lock()
		if ch.c.udpChans[ch.id] == ch {
			delete(ch.c.udpChans, ch.id)
		}
		ch.c.mu.Unlock()
		if tell {
			ch.c.write(TypeUDPClose, &UDPClose{Channel: ch.hexID}) // best effort
		}
	})
}

// WriteTo sends p to the other agent through the relay; addr is ignored
// (the channel has one peer).
func (ch *UDPChannel) WriteTo(p []byte, _ net.Addr) (int, error) {
	select {
	case <-ch.closing:
		return 0, ch.Err()
	default:
	}
	if err := ch.send(udpTypeData, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (ch *UDPChannel) send(typ byte, body []byte) error {
	seq := ch.seq.Add(1)
	bp := udpBufs.Get().(*[]byte)
	ch.macMu.Lock()
	b := appendSealed((*bp)[:0], typ, ch.id, ch.side, seq, body, ch.mac)
	ch.macMu.Unlock()
	_, err := ch.pc.WriteTo(b, ch.relay)
	if cap(b) <= 64<<10 {
		*bp = b[:0]
		udpBufs.Put(bp)
	}
	if err != nil {
		return fmt.Errorf("relay: udp channel: %w", err)
	}
	return nil
}

// ReadFrom returns the next datagram from the other agent, reported as
// from PeerAddr. It honours SetReadDeadline (quic-go uses it to stop).
func (ch *UDPChannel) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		ch.dmu.Lock()
		dl, wake := ch.deadline, ch.wake
		ch.dmu.Unlock()
		var timeout <-chan time.Time
		var t *time.Timer
		if !dl.IsZero() {
			d := time.Until(dl)
			if d <= 0 {
				return 0, nil, os.ErrDeadlineExceeded
			}
			t = time.NewTimer(d)
			timeout = t.C
		}
		var pkt []byte
		var err error
		select {
		case pkt = <-ch.queue:
		case <-ch.closing:
			err = ch.Err()
		case <-timeout:
			err = os.ErrDeadlineExceeded
		case <-wake:
		}
		if t != nil {
			t.Stop()
		}
		switch {
		case pkt != nil:
			return copy(p, pkt), ch.relay, nil
		case err != nil:
			return 0, nil, err
		}
	}
}

// SetReadDeadline sets the deadline of ReadFrom, and wakes one waiting.
func (ch *UDPChannel) SetReadDeadline(t time.Time) error {
	ch.dmu.Lock()
	ch.deadline = t
	close(ch.wake)
	ch.wake = make(chan struct{})
	ch.dmu.Unlock()
	return nil
}

// SetWriteDeadline sets the deadline of the socket's writes.
func (ch *UDPChannel) SetWriteDeadline(t time.Time) error { return ch.pc.SetWriteDeadline(t) }

// SetDeadline sets both deadlines.
func (ch *UDPChannel) SetDeadline(t time.Time) error {
	ch.SetReadDeadline(t)
	return ch.SetWriteDeadline(t)
}

// SetReadBuffer and SetWriteBuffer size the socket's buffers (quic-go
// asks for large ones).
func (ch *UDPChannel) SetReadBuffer(n int) error {
	if s, ok := ch.pc.(interface{ SetReadBuffer(int) error }); ok {
		return s.SetReadBuffer(n)
	}
	return errors.New("relay: udp channel socket cannot size its buffer")
}

func (ch *UDPChannel) SetWriteBuffer(n int) error {
	if s, ok := ch.pc.(interface{ SetWriteBuffer(int) error }); ok {
		return s.SetWriteBuffer(n)
	}
	return errors.New("relay: udp channel socket cannot size its buffer")
}

// fromRelay reports whether a is the relay's UDP address.
func (ch *UDPChannel) fromRelay(a net.Addr) bool {
	ua, ok := a.(*net.UDPAddr)
	if !ok {
		return false
	}
	ap := ua.AddrPort()
	return ap.Addr().Unmap() == ch.relayAP.Addr() && ap.Port() == ch.relayAP.Port()
}

// readLoop reads the socket: answers mark the channel ready, forwarded
// data is queued for ReadFrom, anything else is dropped.
func (ch *UDPChannel) readLoop() {
	defer ch.wg.Done()
	buf := make([]byte, udpMaxDatagram)
	for {
		n, from, err := ch.pc.ReadFrom(buf)
		if err != nil {
			ch.shut(fmt.Errorf("%w: socket: %v", ErrUDPChannelClosed, err), true)
			return
		}
		p := buf[:n]
		if !ch.fromRelay(from) {
			ch.dropped.Add(1)
			continue
		}
		if len(p) > 4 && p[4] == udpTypeAck {
			ch.answer(p)
			continue
		}
		id, payload, err := parseForward(p)
		if err != nil || id != ch.id {
			ch.dropped.Add(1)
			continue
		}
		select {
		case ch.queue <- append([]byte(nil), payload...):
		default:
			ch.dropped.Add(1)
		}
	}
}

// answer takes a keepalive answer: sealed with this side's key, for a
// keepalive this side sent.
func (ch *UDPChannel) answer(p []byte) {
	sp, err := parseSealed(p)
	if err != nil || sp.Type != udpTypeAck || sp.Channel != ch.id || sp.Side != ch.side ||
		sp.Seq > ch.seq.Load() || !sp.verify(ch.rmac) {
		ch.dropped.Add(1)
		return
	}
	ch.readyOnce.Do(func() { close(ch.ready) })
	if sp.Body[0]&udpAckPeerKnown != 0 {
		ch.peerOnce.Do(func() { close(ch.peerReady) })
	}
}

// keepLoop sends keepalives: fast until the relay knows the other side,
// then every KeepAlive.
func (ch *UDPChannel) keepLoop() {
	defer ch.wg.Done()
	wait := func(d time.Duration, early <-chan struct{}) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-ch.closing:
			return false
		case <-t.C:
		case <-early:
		}
		return true
	}
	for {
		ch.send(udpTypeKeep, []byte{0})
		select {
		case <-ch.peerReady:
		default:
			if !wait(min(ch.keep, udpFastKeepAlive), ch.peerReady) {
				return
			}
			select {
			case <-ch.peerReady:
			default:
				continue
			}
		}
		// The relay knows both sides: only hold the mappings.
		ch.slow.Store(true)
		if !wait(ch.keep, nil) {
			return
		}
	}
}
