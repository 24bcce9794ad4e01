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
	"net"
	"net/netip"
	"strconv"
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
		queue: make(chan *[]byte, o.Queue), ready: make(chan struct{}), peerReady: make(chan struct{}),
		closing: make(chan struct{}), wake: make(chan struct{}), loopDone: make(chan struct{})}
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
