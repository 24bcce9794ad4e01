package relay

// The QUIC view of a UDPChannel: quic-go gets its fast socket path (GSO
// sends, recvmmsg batches, DF for path MTU discovery) through a channel,
// as it does on a punched *net.UDPConn. A plain net.PacketConn costs one
// sendto per 1,280-byte packet, each carrying the packet through the
// site's NAT router inside the syscall, and one goroutine hand-off per
// received datagram: most of a relayed-UDP flow's CPU (BENCHMARKS.md §10).

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// QUICPacketConn returns the conn to run QUIC on (transport.NewQUICTransport
// calls it): a view of the channel that quic-go treats as a UDP socket
// with GSO and batched reads, or the channel itself when its socket is not
// a *net.UDPConn.
func (ch *UDPChannel) QUICPacketConn() net.PacketConn {
	uc, ok := ch.pc.(*net.UDPConn)
	if !ok {
		return ch
	}
	q := &quicChannel{UDPChannel: ch, uc: uc, gro: setUDPGRO(uc)}
	if la, ok := uc.LocalAddr().(*net.UDPAddr); ok && la.IP.To4() != nil {
		q.batch = ipv4.NewPacketConn(uc)
	} else {
		q.batch = ipv6.NewPacketConn(uc)
	}
	return q
}

// quicChannel is quic-go's OOBCapablePacketConn with ReadBatch: writes are
// sealed per segment and sent with GSO; ReadBatch reads the socket itself
// (the channel's readLoop hands the socket over at the first call) and
// unwraps the relay's forwarded datagrams in place of quic-go's buffers.
// quic-go calls ReadBatch from one goroutine.
type quicChannel struct {
	*UDPChannel
	uc    *net.UDPConn
	batch interface {
		ReadBatch([]ipv4.Message, int) (int, error)
	}

	gro    bool           // the socket has UDP_GRO
	rmsgs  []ipv4.Message // ReadBatch's own messages
	left   [][]byte       // datagrams (segments) of the last read, in rmsgs' buffers
	leftAt int            // the first of left not yet delivered

	wmu  sync.Mutex // guards wbuf and woob (the transport may write beside the connection)
	wbuf []byte     // WriteMsgUDP's sealed segments
	woob []byte
}

// quicBatch is how many datagrams one ReadBatch reads at most; with
// UDP_GRO, quicGROBatch, each up to a whole burst of the relay's.
const (
	quicBatch    = 16
	quicGROBatch = 4
)

// SyscallConn is the socket's: quic-go sets ECN, packet-info and DF
// options on it and asks whether it can do GSO.
func (q *quicChannel) SyscallConn() (syscall.RawConn, error) { return q.uc.SyscallConn() }

// ReadMsgUDP is ReadFrom (quic-go reads through ReadBatch).
func (q *quicChannel) ReadMsgUDP(b, _ []byte) (n, oobn, flags int, addr *net.UDPAddr, err error) {
	n, _, err = q.ReadFrom(b)
	return n, 0, 0, q.relay, err
}

// WriteMsgUDP seals b for the relay. With a UDP_SEGMENT control message
// (quic-go's GSO), b is several packets of the segment size (the last may
// be shorter): each is sealed as its own datagram, and they go out in one
// GSO send whose segment size includes the seal. Other control messages
// (ECN marks) are not passed on: the relay does not carry them.
func (q *quicChannel) WriteMsgUDP(b, oob []byte, _ *net.UDPAddr) (n, oobn int, err error) {
	select {
	case <-q.closing:
		return 0, 0, q.Err()
	default:
	}
	seg := gsoSize(oob)
	if seg <= 0 || seg >= len(b) {
		if err := q.send(udpTypeData, b); err != nil {
			return 0, 0, err
		}
		return len(b), 0, nil
	}
	q.wmu.Lock()
	defer q.wmu.Unlock()
	out := q.wbuf[:0]
	var segs uint64
	q.macMu.Lock()
	for rest := b; len(rest) > 0; segs++ {
		k := min(seg, len(rest))
		out = appendSealed(out, udpTypeData, q.id, q.side, q.seq.Add(1), rest[:k], q.mac)
		rest = rest[k:]
	}
	q.macMu.Unlock()
	q.wbuf = out
	q.woob = appendGSO(q.woob[:0], seg+udpSealedOver)
	if _, _, err := q.uc.WriteMsgUDP(out, q.woob, q.relay); err != nil {
		return 0, 0, err // unwrapped: quic-go tells EIO (no GSO) and EMSGSIZE (a probe) apart
	}
	q.sendCalls.Add(1)
	q.sentDgram.Add(segs)
	return len(b), 0, nil
}

// gsoSize is the UDP_SEGMENT size in oob, or 0.
func gsoSize(oob []byte) int {
	for len(oob) > 0 {
		h, body, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			return 0
		}
		if h.Level == unix.SOL_UDP && h.Type == unix.UDP_SEGMENT && len(body) >= 2 {
			return int(binary.NativeEndian.Uint16(body))
		}
		oob = rest
	}
	return 0
}

func appendGSO(b []byte, size int) []byte {
	start := len(b)
	b = append(b, make([]byte, unix.CmsgSpace(2))...)
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[start]))
	h.Level = unix.SOL_UDP
	h.Type = unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(b[start+unix.CmsgLen(0):], uint16(size))
	return b
}

// ReadBatch fills ms with the other agent's datagrams (payloads, from
// PeerAddr): datagrams the readLoop queued first, then the segments of the
// last read not yet taken, then a batch read from the socket. With
// UDP_GRO one read can return a burst of the relay's (one GSO write) as
// one datagram: its segments are taken one per message. Keepalive answers
// are taken on the way; anything not from the relay or not of this
// channel is dropped, as readLoop does.
func (q *quicChannel) ReadBatch(ms []ipv4.Message, _ int) (int, error) {
	q.takeSocket()
	k := 0
	for k < len(ms) {
		select {
		case bp := <-q.queue:
			k = q.deliver(ms, k, *bp)
			putBuf(bp)
			continue
		default:
		}
		break
	}
	k = q.takeLeft(ms, k)
	if k > 0 {
		return k, nil
	}
	if q.rmsgs == nil {
		n, size := quicBatch, 2048
		if q.gro {
			n, size = quicGROBatch, udpMaxDatagram
		}
		q.rmsgs = make([]ipv4.Message, n)
		for i := range q.rmsgs {
			q.rmsgs[i].Buffers = [][]byte{make([]byte, size)}
			if q.gro {
				q.rmsgs[i].OOB = make([]byte, 128) // UDP_GRO, and what quic-go's socket options add
			}
		}
	}
	for k == 0 {
		n, err := q.batch.ReadBatch(q.rmsgs, 0)
		if err != nil {
			select {
			case <-q.closing:
				return 0, q.Err()
			default:
			}
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				q.shut(fmt.Errorf("%w: socket: %v", ErrUDPChannelClosed, err), true)
			}
			return 0, err
		}
		q.left, q.leftAt = q.left[:0], 0
		for i := range n {
			m := &q.rmsgs[i]
			if !q.fromRelay(m.Addr) || m.Flags&syscall.MSG_TRUNC != 0 {
				q.dropped.Add(1)
				continue
			}
			p := m.Buffers[0][:m.N]
			seg := 0
			if q.gro {
				seg = groSize(m.OOB[:m.NN])
			}
			if seg <= 0 || seg >= len(p) {
				q.left = append(q.left, p)
				continue
			}
			for len(p) > 0 {
				c := min(seg, len(p))
				q.left = append(q.left, p[:c:c])
				p = p[c:]
			}
		}
		k = q.takeLeft(ms, k)
	}
	return k, nil
}

// takeLeft delivers the datagrams of the last read not yet taken into
// ms from k on; it returns the next free index.
func (q *quicChannel) takeLeft(ms []ipv4.Message, k int) int {
	for q.leftAt < len(q.left) && k < len(ms) {
		k = q.deliver(ms, k, q.left[q.leftAt])
		q.leftAt++
	}
	return k
}

// deliver puts datagram p, if it is the other side's data, into ms[k] and
// returns the next free index; an answer is taken, anything else dropped.
func (q *quicChannel) deliver(ms []ipv4.Message, k int, p []byte) int {
	if len(p) > 4 && p[4] == udpTypeAck {
		q.answer(p)
		return k
	}
	id, payload, err := parseForward(p)
	if err != nil || id != q.id {
		q.dropped.Add(1)
		return k
	}
	m := &ms[k]
	m.N = copy(m.Buffers[0], payload)
	m.NN, m.Flags, m.Addr = 0, 0, q.relay
	return k + 1
}

// takeSocket stops the channel's readLoop, once, so ReadBatch reads the
// socket itself; from then on the channel's read deadline is the
// socket's.
func (q *quicChannel) takeSocket() {
	q.handoff.Do(func() {
		q.stopLoop.Store(true)
		q.pc.SetReadDeadline(time.Unix(1, 0)) // wakes readLoop's read
		<-q.loopDone
		q.dmu.Lock()
		q.direct = true
		q.pc.SetReadDeadline(q.deadline)
		q.dmu.Unlock()
	})
}
