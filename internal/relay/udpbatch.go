package relay

// Batched UDP on the relay: a relayed-UDP flow is one datagram per QUIC
// packet, and each costs the relay a read and a write whose kernel work
// (the forward through the peer's NAT router) dominates its CPU. ServeUDP
// on a *net.UDPConn reads up to udpBatch datagrams per recvmmsg and sends
// the datagrams of one batch that go to the same address with the same
// size as one GSO write (UDP_SEGMENT), in their order.

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

const (
	// udpBatch is how many datagrams one read takes at most.
	udpBatch = 16
	// udpBatchBuf is each one's buffer: a jumbo frame's datagram. A
	// longer one (no QUIC packet is) is dropped as malformed.
	udpBatchBuf = 9 << 10
	// udpGROBatch is how many datagrams one read takes with UDP_GRO,
	// each up to udpMaxDatagram (a GSO burst).
	udpGROBatch = 8
	// udpMaxSegments bounds one GSO write (the kernel's UDP_MAX_SEGMENTS
	// is 64 on older kernels).
	udpMaxSegments = 64
)

// errStopUDP ends ServeUDP without an error: the server closed.
var errStopUDP = errors.New("relay closed")

// udpRun is datagrams for one address, all of size seg but the last,
// still to be written.
type udpRun struct {
	to    netip.AddrPort
	seg   int
	parts [][]byte
	size  int
	full  bool // the last part was shorter: nothing more joins
}

// serveUDPBatches is ServeUDP's loop on a *net.UDPConn.
func (s *Server) serveUDPBatches(sock *udpSock) error {
	var rb interface {
		ReadBatch([]ipv4.Message, int) (int, error)
	}
	if la, ok := sock.uc.LocalAddr().(*net.UDPAddr); ok && la.IP.To4() != nil {
		rb = ipv4.NewPacketConn(sock.uc)
	} else {
		rb = ipv6.NewPacketConn(sock.uc)
	}
	// With UDP_GRO the kernel hands over a sender's GSO burst as one
	// datagram of several segments (their size in a control message)
	// instead of splitting it for the socket queue: fewer, larger reads.
	// Each buffer must then hold a whole burst.
	n, size := udpBatch, udpBatchBuf
	gro := setUDPGRO(sock.uc)
	if gro {
		n, size = udpGROBatch, udpMaxDatagram
	}
	msgs := make([]ipv4.Message, n)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{make([]byte, size)}
		if gro {
			msgs[i].OOB = make([]byte, unix.CmsgSpace(4))
		}
	}
	sock.pending = make([]udpRun, 0, 4)
	for {
		n, err := rb.ReadBatch(msgs, 0)
		if err != nil {
			if err := s.udpReadErr(err); err != nil {
				if err == errStopUDP {
					return nil
				}
				return err
			}
			continue
		}
		sock.batching = true
		for i := range n {
			m := &msgs[i]
			ua, ok := m.Addr.(*net.UDPAddr)
			if !ok {
				continue
			}
			if m.Flags&syscall.MSG_TRUNC != 0 {
				s.refuse(ReasonUDPMalformed)
				continue
			}
			from, p := unmapAddrPort(ua.AddrPort()), m.Buffers[0][:m.N]
			seg := 0
			if gro {
				seg = groSize(m.OOB[:m.NN])
			}
			if seg <= 0 {
				s.handleUDP(sock, p, from)
				continue
			}
			for len(p) > 0 {
				k := min(seg, len(p))
				s.handleUDP(sock, p[:k:k], from)
				p = p[k:]
			}
		}
		sock.batching = false
		sock.flush()
	}
}

// queue adds datagram b for to to the pending runs (write, while a batch
// is handled). b must stay valid until flush.
func (u *udpSock) queue(b []byte, to netip.AddrPort) {
	for i := range u.pending {
		r := &u.pending[i]
		if r.to != to {
			continue
		}
		if !r.full && len(b) <= r.seg && len(r.parts) < udpMaxSegments && r.size+len(b) <= udpMaxDatagram-1024 {
			r.parts = append(r.parts, b)
			r.size += len(b)
			r.full = len(b) < r.seg
			return
		}
		u.writeRun(r)
		u.pending[i] = udpRun{to: to, seg: len(b), parts: append(r.parts[:0], b), size: len(b)}
		return
	}
	u.pending = append(u.pending, udpRun{to: to, seg: len(b), parts: [][]byte{b}, size: len(b)})
}

// flush writes the pending runs.
func (u *udpSock) flush() {
	for i := range u.pending {
		u.writeRun(&u.pending[i])
	}
	u.pending = u.pending[:0]
}

// writeRun writes one run: one datagram as it is, several as one GSO
// write (or one by one if the socket cannot).
func (u *udpSock) writeRun(r *udpRun) {
	if len(r.parts) == 1 || u.noGSO {
		u.writeEach(r)
		return
	}
	u.gsoBuf = u.gsoBuf[:0]
	for _, p := range r.parts {
		u.gsoBuf = append(u.gsoBuf, p...)
	}
	u.oob = appendGSO(u.oob[:0], r.seg)
	_, _, err := u.uc.WriteMsgUDPAddrPort(u.gsoBuf, u.oob, r.to)
	if err == nil {
		u.count(len(r.parts))
	}
	switch {
	case err == nil:
	case errors.Is(err, unix.EIO) || errors.Is(err, unix.ENOPROTOOPT):
		// No GSO here (a device without checksum offload, an old
		// kernel): one by one from now on.
		u.noGSO = true
		u.writeEach(r)
	case errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EMSGSIZE):
		// This run only (segments above the path's MTU, say): a
		// sender's odd datagrams must not turn GSO off for everyone.
		u.writeEach(r)
	}
}

// writeEach writes a run's datagrams one by one.
func (u *udpSock) writeEach(r *udpRun) {
	for _, p := range r.parts {
		u.count(1)
		u.uc.WriteToUDPAddrPort(p, r.to)
	}
}

// setUDPGRO asks the kernel for UDP_GRO on uc; it reports whether it did.
func setUDPGRO(uc *net.UDPConn) bool {
	rc, err := uc.SyscallConn()
	if err != nil {
		return false
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_UDP, unix.UDP_GRO, 1)
	}); err != nil {
		return false
	}
	return serr == nil
}

// groSize is the segment size in a UDP_GRO control message, or 0.
func groSize(oob []byte) int {
	for len(oob) > 0 {
		h, body, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			return 0
		}
		if h.Level == unix.SOL_UDP && h.Type == unix.UDP_GRO && len(body) >= 4 {
			return int(int32(binary.NativeEndian.Uint32(body)))
		}
		oob = rest
	}
	return 0
}
