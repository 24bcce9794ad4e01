package relay

// UDP channels: a relayed path over UDP (TURN-like) for two agents that
// cannot punch (a symmetric NAT) but may send UDP out. An agent asks for a
// channel on its control connection (UDPBind → UDPBound, the peer gets
// UDPBound too, like Incoming); both then send datagrams to the relay's
// UDP port, which forwards each one to the other side. The agents run
// QUIC end to end through it (UDPChannel, udpclient.go), so the relay
// never reads their traffic.
//
// Datagrams to the relay (data, keepalive) and the relay's keepalive
// answers are sealed:
//
//	magic "FMRU" | type 1 | channel 16 | side 1 | seq 8 (big end.) | body | tag 16
//
// tag is HMAC-SHA256 under the sending side's key (from its UDPBound;
// only that agent and the relay know it) over everything before it,
// truncated to 16 bytes. seq counts up per side; the relay keeps a
// 64-datagram replay window per side. So:
//   - a datagram from anyone without the key is refused (udp_bad_tag) and
//     teaches the relay nothing;
//   - a recorded datagram sent again, from any address, is refused
//     (udp_replay); the relay learns a side's address only from a datagram
//     with a valid tag and a fresh seq, and forwards to the address of the
//     newest such datagram (NAT rebinding is followed, hijacking is not);
//   - one side's key cannot seal the other side's datagrams.
//
// Data the relay forwards is unsealed (QUIC authenticates it end to end,
// and the agent takes it only from the relay's address):
//
//	magic "FMRU" | type 5 | channel 16 | payload
//
// No amplification: a forwarded datagram is 25 bytes smaller than the one
// received, and a keepalive is answered only by a datagram no larger than
// it. Data is charged to the sender's byte budget (Config.BytesPerSecond,
// shared with its TCP sessions) and dropped beyond it: UDP is not held
// back, and QUIC's congestion control sees the loss.

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Channel datagram types (after the reflexive 1 and 2, on the same port).
const (
	udpTypeData = 3 // agent → relay: sealed payload for the other side
	udpTypeKeep = 4 // agent → relay: sealed keepalive, answered by udpTypeAck
	udpTypeFwd  = 5 // relay → agent: the other side's payload
	udpTypeAck  = 6 // relay → agent: sealed answer to a keepalive
)

// Channel datagram layout.
const (
	udpChanIDLen  = 16
	udpKeyLen     = 32
	udpTagLen     = 16
	udpSealedHdr  = 4 + 1 + udpChanIDLen + 1 + 8 // magic, type, channel, side, seq
	udpSealedOver = udpSealedHdr + udpTagLen     // bytes a sealed datagram adds
	udpFwdHdr     = 4 + 1 + udpChanIDLen         // magic, type, channel
	// UDPChannelOverhead is how many bytes a UDPChannel adds to each
	// datagram on the way to the relay (the way back adds fewer).
	UDPChannelOverhead = udpSealedOver
	// udpKeepLen is the length of a keepalive and of its answer: a
	// one-byte body (the answer's flags).
	udpKeepLen = udpSealedOver + 1
	// udpAckPeerKnown, in an answer's flags: the relay knows the other
	// side's address, so data sent now is forwarded.
	udpAckPeerKnown = 1
)

// Refusal reasons of UDP channels: labels of fogmesh_relay_refused_total.
const (
	ReasonUDPChannelLimit   = "udp_channel_limit"   // MaxUDPChannelsPerNode reached
	ReasonUDPUnavailable    = "udp_unavailable"     // UDPBind to a relay with no UDP socket
	ReasonUDPMalformed      = "udp_malformed"       // a channel datagram too short or badly framed
	ReasonUDPUnknownChannel = "udp_unknown_channel" // a datagram or UDPClose for no open channel (of yours)
	ReasonUDPBadTag         = "udp_bad_tag"         // a datagram whose tag is not its side's: forged or spoofed
	ReasonUDPReplay         = "udp_replay"          // a datagram whose sequence number was seen or is too old
	ReasonUDPPeerUnbound    = "udp_peer_unbound"    // data before the other side's address is known
	ReasonUDPRateLimit      = "udp_rate_limit"      // the sender is over BytesPerSecond: dropped
)

var udpReasons = []string{ReasonUDPChannelLimit, ReasonUDPUnavailable, ReasonUDPMalformed, ReasonUDPUnknownChannel,
	ReasonUDPBadTag, ReasonUDPReplay, ReasonUDPPeerUnbound, ReasonUDPRateLimit}

// udpMetrics registers the UDP channels' metrics.
func (s *Server) udpMetrics(m *metrics.Set) {
	s.mUDPBytes = m.NewCounter(`fogmesh_relay_udp_bytes_total`)
	s.mUDPWrites = m.NewCounter(`fogmesh_relay_udp_socket_writes_total`)
	s.mUDPSent = m.NewCounter(`fogmesh_relay_udp_datagrams_sent_total`)
	s.mUDPChannels = m.NewCounter(`fogmesh_relay_udp_channels_total`)
	m.NewGauge(`fogmesh_relay_udp_channels_active`, func() float64 {
		s.mu.Lock()
		defer s.mu.Unlock()
		return float64(len(s.udpChans))
	})
}

// sealedPacket is a parsed sealed datagram.
type sealedPacket struct {
	Type    byte
	Channel [udpChanIDLen]byte
	Side    byte
	Seq     uint64
	Body    []byte
	signed  []byte // what the tag covers
	tag     []byte
}

// isChannelPacket tells channel datagrams from reflexive requests.
func isChannelPacket(p []byte) bool {
	return len(p) >= 5 && string(p[:4]) == udpMagic && p[4] >= udpTypeData && p[4] <= udpTypeAck
}

// parseSealed parses a sealed datagram (data, keepalive or answer); the
// tag is not checked (verify).
func parseSealed(p []byte) (sealedPacket, error) {
	if len(p) < udpSealedOver {
		return sealedPacket{}, fmt.Errorf("relay: udp channel datagram of %d bytes, want at least %d", len(p), udpSealedOver)
	}
	if string(p[:4]) != udpMagic {
		return sealedPacket{}, errors.New("relay: udp channel datagram: bad magic")
	}
	switch p[4] {
	case udpTypeData, udpTypeKeep, udpTypeAck:
	default:
		return sealedPacket{}, fmt.Errorf("relay: udp channel datagram: type %d is not sealed", p[4])
	}
	if p[21] > 1 {
		return sealedPacket{}, fmt.Errorf("relay: udp channel datagram: side %d", p[21])
	}
	if p[4] != udpTypeData && len(p) < udpKeepLen {
		return sealedPacket{}, errors.New("relay: udp channel keepalive without its flags byte")
	}
	sp := sealedPacket{Type: p[4], Side: p[21], Seq: binary.BigEndian.Uint64(p[22:30]),
		Body: p[udpSealedHdr : len(p)-udpTagLen], signed: p[:len(p)-udpTagLen], tag: p[len(p)-udpTagLen:]}
	copy(sp.Channel[:], p[5:21])
	return sp, nil
}

// verify checks the tag with mac (HMAC-SHA256 under the side's key; it is
// Reset here, so the caller must not share it concurrently).
func (sp *sealedPacket) verify(mac hash.Hash) bool {
	var sum [sha256.Size]byte
	mac.Reset()
	mac.Write(sp.signed)
	return hmac.Equal(mac.Sum(sum[:0])[:udpTagLen], sp.tag)
}

// appendSealed appends a sealed datagram to b.
func appendSealed(b []byte, typ byte, id [udpChanIDLen]byte, side byte, seq uint64, body []byte, mac hash.Hash) []byte {
	start := len(b)
	b = append(b, udpMagic...)
	b = append(b, typ)
	b = append(b, id[:]...)
	b = append(b, side)
	b = binary.BigEndian.AppendUint64(b, seq)
	b = append(b, body...)
	var sum [sha256.Size]byte
	mac.Reset()
	mac.Write(b[start:])
	return append(b, mac.Sum(sum[:0])[:udpTagLen]...)
}

// parseForward parses a datagram the relay forwarded: its channel and
// payload.
func parseForward(p []byte) ([udpChanIDLen]byte, []byte, error) {
	var id [udpChanIDLen]byte
	if len(p) < udpFwdHdr || string(p[:4]) != udpMagic || p[4] != udpTypeFwd {
		return id, nil, errors.New("relay: not a forwarded udp channel datagram")
	}
	copy(id[:], p[5:udpFwdHdr])
	return id, p[udpFwdHdr:], nil
}

// replayWindow accepts each sequence number once, within 64 of the
// highest seen (as IPsec's and WireGuard's windows).
type replayWindow struct {
	max  uint64
	bits uint64 // bit i: max-i was seen
}

// accept records seq; ok is false for a replay or one too old, newest
// says seq is the highest so far.
func (w *replayWindow) accept(seq uint64) (ok, newest bool) {
	if seq == 0 {
		return false, false
	}
	if seq > w.max {
		if d := seq - w.max; d >= 64 {
			w.bits = 1
		} else {
			w.bits = w.bits<<d | 1
		}
		w.max = seq
		return true, true
	}
	d := w.max - seq
	if d >= 64 || w.bits&(1<<d) != 0 {
		return false, false
	}
	w.bits |= 1 << d
	return true, false
}

// udpChan is one UDP channel on the relay.
type udpChan struct {
	id      [udpChanIDLen]byte
	hexID   string
	created time.Time

	mu    sync.Mutex // guards the following
	last  time.Time  // the last valid datagram from either side
	sides [2]udpSide // 0: the binder, 1: the peer
}

// udpSide is what the relay knows of one side of a channel.
type udpSide struct {
	node *node
	ctrl *ctrlConn      // the control connection the channel belongs to
	mac  hash.Hash      // HMAC-SHA256 under the side's key
	win  replayWindow   // of the side's seq
	addr netip.AddrPort // where the side was last seen; invalid until then
	sock *udpSock       // the relay socket it was seen on
}

// bindUDP handles X's UDPBind: if allowed, within limits and Y is
// connected, a channel is made and both are told (Y first, so Y's agent
// is ready by the time X sends).
func (s *Server) bindUDP(xc *ctrlConn, x spiffeid.ID, m *UDPBind) {
	refuse := func(reason, msg string) {
		s.refuse(reason)
		s.send(xc, TypeError, &Error{Nonce: m.Nonce, Reason: reason, Message: msg})
	}
	y, err := spiffeid.FromString(m.Peer)
	if err != nil {
		refuse(ReasonBadRequest, "peer: "+err.Error())
		return
	}
	if r := s.authorize(x, y); r != "" {
		refuse(r, "may not reach "+y.String())
		return
	}
	keys := [2][]byte{make([]byte, udpKeyLen), make([]byte, udpKeyLen)}
	rand.Read(keys[0])
	rand.Read(keys[1])
	now := s.cfg.Now()
	ch := &udpChan{created: now, last: now}
	s.mu.Lock()
	if len(s.udpConns) == 0 {
		s.mu.Unlock()
		refuse(ReasonUDPUnavailable, "this relay has no UDP port")
		return
	}
	port := 0
	if ua, ok := s.udpConns[0].LocalAddr().(*net.UDPAddr); ok {
		port = ua.Port
	}
	yn := s.nodes[y.String()]
	if yn == nil || yn.ctrl == nil {
		s.mu.Unlock()
		refuse(ReasonNotConnected, y.String()+" is not connected to this relay")
		return
	}
	xn := s.nodeLocked(x)
	if xn.udpChans >= s.cfg.MaxUDPChannelsPerNode || yn.udpChans >= s.cfg.MaxUDPChannelsPerNode {
		s.gcLocked(xn)
		s.mu.Unlock()
		refuse(ReasonUDPChannelLimit, "too many UDP channels")
		return
	}
	for {
		rand.Read(ch.id[:])
		if s.udpChans[ch.id] == nil {
			break
		}
	}
	ch.hexID = hex.EncodeToString(ch.id[:])
	ch.sides[0] = udpSide{node: xn, ctrl: xc, mac: hmac.New(sha256.New, keys[0])}
	ch.sides[1] = udpSide{node: yn, ctrl: yn.ctrl, mac: hmac.New(sha256.New, keys[1])}
	xn.udpChans++
	yn.udpChans++
	s.udpChans[ch.id] = ch
	yc := yn.ctrl
	s.mu.Unlock()
	s.mUDPChannels.Inc()
	if !s.send(yc, TypeUDPBound, &UDPBound{Channel: ch.hexID, Peer: x.String(), Side: 1, Key: hex.EncodeToString(keys[1]), Port: port}) {
		s.closeUDP(ch, "", yc)
		refuse(ReasonNotConnected, y.String()+" is not reading its relay connection")
		return
	}
	s.send(xc, TypeUDPBound, &UDPBound{Nonce: m.Nonce, Channel: ch.hexID, Peer: y.String(), Side: 0, Key: hex.EncodeToString(keys[0]), Port: port})
}

// closeUDP closes ch, if still open, and tells the agents of its sides
// other than except (UDPClose with reason, unless reason is "").
func (s *Server) closeUDP(ch *udpChan, reason string, except *ctrlConn) {
	s.mu.Lock()
	if s.udpChans[ch.id] != ch {
		s.mu.Unlock()
		return
	}
	delete(s.udpChans, ch.id)
	var tell []*ctrlConn
	for i := range ch.sides {
		sd := &ch.sides[i]
		sd.node.udpChans--
		s.gcLocked(sd.node)
		if sd.ctrl != except && sd.node.ctrl == sd.ctrl {
			tell = append(tell, sd.ctrl)
		}
	}
	s.mu.Unlock()
	if reason == "" {
		return
	}
	for _, c := range tell {
		s.send(c, TypeUDPClose, &UDPClose{Channel: ch.hexID, Reason: reason})
	}
}

// closeUDPFrom handles an agent's UDPClose: only a side of the channel
// may close it.
func (s *Server) closeUDPFrom(c *ctrlConn, m *UDPClose) {
	var id [udpChanIDLen]byte
	hex.Decode(id[:], []byte(m.Channel)) // checked by Decode
	s.mu.Lock()
	ch := s.udpChans[id]
	s.mu.Unlock()
	if ch == nil || (ch.sides[0].ctrl != c && ch.sides[1].ctrl != c) {
		s.refuse(ReasonUDPUnknownChannel)
		return
	}
	s.closeUDP(ch, "closed by the peer", c)
}

// closeUDPOf closes the channels bound to control connection c (it
// ended): their agent can no longer be told anything about them.
func (s *Server) closeUDPOf(c *ctrlConn) {
	s.mu.Lock()
	var dead []*udpChan
	for _, ch := range s.udpChans {
		if ch.sides[0].ctrl == c || ch.sides[1].ctrl == c {
			dead = append(dead, ch)
		}
	}
	s.mu.Unlock()
	for _, ch := range dead {
		s.closeUDP(ch, "peer disconnected from the relay", c)
	}
}

// sweepUDP closes idle channels, and channels one side never used, until
// the server closes.
func (s *Server) sweepUDP() {
	defer s.wg.Done()
	every := max(min(s.cfg.UDPIdleTimeout, s.cfg.AcceptTimeout)/4, 10*time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		now := s.cfg.Now()
		type expired struct {
			ch     *udpChan
			reason string
		}
		var dead []expired
		s.mu.Lock()
		for _, ch := range s.udpChans {
			ch.mu.Lock()
			switch {
			case now.Sub(ch.last) > s.cfg.UDPIdleTimeout:
				dead = append(dead, expired{ch, "idle"})
			case (!ch.sides[0].addr.IsValid() || !ch.sides[1].addr.IsValid()) && now.Sub(ch.created) > s.cfg.AcceptTimeout:
				dead = append(dead, expired{ch, "a side never sent to the relay's UDP port"})
			}
			ch.mu.Unlock()
		}
		s.mu.Unlock()
		for _, e := range dead {
			s.closeUDP(e.ch, e.reason, nil)
		}
	}
}

// udpChannelPacket handles one channel datagram p from an agent, read on
// sock: a keepalive is answered, data is forwarded to the other side. p is
// the read buffer: the forwarded datagram is built in it.
func (s *Server) udpChannelPacket(sock *udpSock, p []byte, from netip.AddrPort) {
	sp, err := parseSealed(p)
	if err != nil || sp.Type == udpTypeAck {
		s.refuse(ReasonUDPMalformed)
		return
	}
	s.mu.RLock()
	ch := s.udpChans[sp.Channel]
	s.mu.RUnlock()
	if ch == nil {
		s.refuse(ReasonUDPUnknownChannel)
		return
	}
	ch.mu.Lock()
	sd := &ch.sides[sp.Side]
	if !sp.verify(sd.mac) {
		ch.mu.Unlock()
		s.refuse(ReasonUDPBadTag)
		return
	}
	ok, newest := sd.win.accept(sp.Seq)
	if !ok {
		ch.mu.Unlock()
		s.refuse(ReasonUDPReplay)
		return
	}
	if newest || !sd.addr.IsValid() {
		sd.addr, sd.sock = from, sock
	}
	ch.last = s.cfg.Now()
	other := &ch.sides[1-sp.Side]
	dst, dsock, bucket := other.addr, other.sock, sd.node.bucket
	if sp.Type == udpTypeKeep {
		var flags byte
		if dst.IsValid() {
			flags = udpAckPeerKnown
		}
		ack := appendSealed(make([]byte, 0, udpKeepLen), udpTypeAck, sp.Channel, sp.Side, sp.Seq, []byte{flags}, sd.mac)
		ch.mu.Unlock()
		if len(ack) <= len(p) { // always, by parseSealed: never more than received
			sock.write(ack, from)
		}
		return
	}
	ch.mu.Unlock()
	if !dst.IsValid() {
		s.refuse(ReasonUDPPeerUnbound)
		return
	}
	n := len(sp.Body)
	if bucket != nil && !bucket.allow(int64(n)) {
		s.refuse(ReasonUDPRateLimit)
		return
	}
	// Rewrite the header in place in front of the body.
	out := p[udpSealedHdr-udpFwdHdr : udpSealedHdr+n]
	copy(out, udpMagic)
	out[4] = udpTypeFwd
	copy(out[5:udpFwdHdr], sp.Channel[:])
	if _, err := dsock.write(out, dst); err == nil {
		s.mUDPBytes.Add(n)
	}
	if s.tap != nil { // after the count: the tap never sees more than it
		s.tap(ch.hexID, out[udpFwdHdr:])
	}
}
