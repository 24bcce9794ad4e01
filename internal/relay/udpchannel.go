package relay

// UDPChannel: the net.PacketConn an agent runs QUIC on over a UDP channel
// (udpclient.go says how to use it).

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

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

	queue     chan *[]byte  // pooled (udpBufs)
	ready     chan struct{} // closed at the relay's first answer
	peerReady chan struct{} // closed when the relay knows the other side
	readyOnce sync.Once
	peerOnce  sync.Once
	closing   chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
	dropped   atomic.Uint64
	sendCalls atomic.Uint64 // socket writes of data and keepalives
	sentDgram atomic.Uint64 // datagrams they carried (more with GSO)
	slow      atomic.Bool   // keepLoop is past the fast keepalives (tests)

	dmu      sync.Mutex // guards deadline, wake and direct
	deadline time.Time
	wake     chan struct{} // closed and replaced when the deadline changes
	direct   bool          // QUICPacketConn's ReadBatch reads the socket: the deadline is the socket's

	handoff  sync.Once     // readLoop hands the socket to ReadBatch (udpchanquic.go)
	stopLoop atomic.Bool   // readLoop is to stop
	loopDone chan struct{} // closed when readLoop returns

	emu sync.Mutex
	err error
}

// udpBufs holds datagram buffers of the channels, both ways.
var udpBufs = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

// putBuf returns a buffer to udpBufs, unless it grew unusually large.
func putBuf(bp *[]byte) {
	if cap(*bp) <= 64<<10 {
		*bp = (*bp)[:0]
		udpBufs.Put(bp)
	}
}

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

// Sent counts the channel's socket writes and the datagrams they carried
// to the relay: more datagrams than writes when QUIC batches (GSO).
func (ch *UDPChannel) Sent() (writes, datagrams uint64) {
	return ch.sendCalls.Load(), ch.sentDgram.Load()
}

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
	*bp = b
	putBuf(bp)
	ch.sendCalls.Add(1)
	ch.sentDgram.Add(1)
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
		var pkt *[]byte
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
			n := copy(p, *pkt)
			putBuf(pkt)
			return n, ch.relay, nil
		case err != nil:
			return 0, nil, err
		}
	}
}

// SetReadDeadline sets the deadline of ReadFrom, and wakes one waiting
// (and of ReadBatch on the QUIC view, once it reads the socket).
func (ch *UDPChannel) SetReadDeadline(t time.Time) error {
	ch.dmu.Lock()
	defer ch.dmu.Unlock()
	ch.deadline = t
	close(ch.wake)
	ch.wake = make(chan struct{})
	if ch.direct {
		return ch.pc.SetReadDeadline(t)
	}
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

// SetWriteBuffer: see SetReadBuffer.
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
// data is queued for ReadFrom, anything else is dropped. It returns when
// the QUIC view takes the socket over (stopLoop).
func (ch *UDPChannel) readLoop() {
	defer ch.wg.Done()
	defer close(ch.loopDone)
	buf := make([]byte, udpMaxDatagram)
	for {
		if ch.stopLoop.Load() {
			return
		}
		n, from, err := ch.pc.ReadFrom(buf)
		if err != nil {
			if ch.stopLoop.Load() {
				return
			}
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
		bp := udpBufs.Get().(*[]byte)
		*bp = append((*bp)[:0], payload...)
		select {
		case ch.queue <- bp:
		default:
			putBuf(bp)
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
