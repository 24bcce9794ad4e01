package relay

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
)

// UDP reflexive address: an agent learns the address its UDP socket has
// as seen from outside (the NAT's mapping), STUN-like. The request carries
// the token the relay gave the agent in Hello over its authenticated
// control connection, so only connected agents get answers (no open
// reflector), and the answer is never larger than the request (no
// amplification).
//
//	request  (udpRequestLen bytes or more):
//	  magic "FMRU" | type 1 | token 16 | zero padding
//	response (udpResponseLen bytes):
//	  magic "FMRU" | type 2 | token 16 | port 2 (big end.) | address 16 (IPv6 or IPv4-mapped)
const (
	udpMagic       = "FMRU"
	udpTypeRequest = 1
	udpTypeAnswer  = 2
	udpTokenLen    = 16
	udpResponseLen = 4 + 1 + udpTokenLen + 2 + 16
	udpRequestLen  = 48 // padded past udpResponseLen
	udpMaxPacket   = 512
	// udpMaxDatagram is the read buffer of the relay's UDP socket: channel
	// datagrams (udpchan.go) carry whole QUIC packets.
	udpMaxDatagram = 64 << 10
)

// ServeUDP answers reflexive requests and forwards UDP channel datagrams
// (udpchan.go) on pc until Close (returns nil) or a read error
// (returned). It closes pc.
func (s *Server) ServeUDP(pc net.PacketConn) error {
	if !s.track(pc) {
		pc.Close()
		return nil
	}
	s.mu.Lock()
	s.udpConns = append(s.udpConns, pc)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.udpConns = slices.DeleteFunc(s.udpConns, func(c net.PacketConn) bool { return c == pc })
		s.mu.Unlock()
	}()
	defer s.untrack(pc)
	if got, err := sizeUDPSocket(pc); err != nil || (got > 0 && got < 2*UDPSocketBuffer) {
		s.log.Warn("relay: udp socket buffer below what was asked: datagram bursts may be dropped",
			"asked", UDPSocketBuffer, "granted", got/2, "rmem_max", sysctlInt("/proc/sys/net/core/rmem_max"), "err", err)
	}
	sock := newUDPSock(pc)
	sock.writes, sock.sent = s.mUDPWrites, s.mUDPSent
	if sock.uc != nil {
		return s.serveUDPBatches(sock)
	}
	buf := make([]byte, udpMaxDatagram)
	for {
		n, from, err := sock.read(buf)
		if err != nil {
			if err := s.udpReadErr(err); err != nil {
				return err
			}
			continue
		}
		if !from.IsValid() {
			continue
		}
		s.handleUDP(sock, buf[:n], from)
	}
}

// udpReadErr is what ServeUDP does after a read error: go on (nil) after
// a timeout, stop (errStop: Close) or return the error.
func (s *Server) udpReadErr(err error) error {
	if s.ctx.Err() != nil {
		return errStopUDP
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return nil
	}
	return fmt.Errorf("relay: udp: %w", err)
}

// handleUDP handles one datagram p from outside, read on sock (p may be
// reused for the answer).
func (s *Server) handleUDP(sock *udpSock, p []byte, from netip.AddrPort) {
	if isChannelPacket(p) {
		s.udpChannelPacket(sock, p, from)
		return
	}
	resp, reason := s.udpAnswer(p, from)
	if reason != "" {
		s.refuse(reason)
		return
	}
	if _, err := sock.write(resp, from); err == nil {
		s.mUDPAnswers.Inc()
	}
}

// udpAnswer returns the answer to one request packet, or the reason it is
// dropped. It records the observed address as the node's UDP candidate.
func (s *Server) udpAnswer(req []byte, ap netip.AddrPort) ([]byte, string) {
	token, err := ParseUDPRequest(req)
	if err != nil {
		return nil, ReasonUDPShort
	}
	s.mu.Lock()
	id, ok := s.tokens[hex.EncodeToString(token)]
	if ok {
		if n := s.nodes[id]; n != nil {
			n.udpObserved = ap.String()
		}
	}
	s.mu.Unlock()
	if !ok {
		return nil, ReasonUDPBadToken
	}
	return appendUDPAnswer(nil, token, ap), ""
}

// AppendUDPRequest appends a reflexive request for token (the Hello's
// UDPToken, hex) to b.
func AppendUDPRequest(b []byte, token string) ([]byte, error) {
	t, err := hex.DecodeString(token)
	if err != nil || len(t) != udpTokenLen {
		return b, fmt.Errorf("relay: udp token %q: want %d hex bytes", token, udpTokenLen)
	}
	b = append(b, udpMagic...)
	b = append(b, udpTypeRequest)
	b = append(b, t...)
	return append(b, make([]byte, udpRequestLen-len(udpMagic)-1-udpTokenLen)...), nil
}

// ParseUDPRequest returns the token of a request packet.
func ParseUDPRequest(p []byte) ([]byte, error) {
	if len(p) < udpRequestLen {
		return nil, fmt.Errorf("relay: udp request of %d bytes, want at least %d", len(p), udpRequestLen)
	}
	if string(p[:4]) != udpMagic || p[4] != udpTypeRequest {
		return nil, errors.New("relay: not a reflexive request")
	}
	return p[5 : 5+udpTokenLen], nil
}

func appendUDPAnswer(b, token []byte, ap netip.AddrPort) []byte {
	b = append(b, udpMagic...)
	b = append(b, udpTypeAnswer)
	b = append(b, token...)
	b = binary.BigEndian.AppendUint16(b, ap.Port())
	a16 := ap.Addr().As16()
	return append(b, a16[:]...)
}

// ParseUDPAnswer returns the observed address in an answer to token.
func ParseUDPAnswer(p []byte, token string) (netip.AddrPort, error) {
	if len(p) != udpResponseLen || string(p[:4]) != udpMagic || p[4] != udpTypeAnswer {
		return netip.AddrPort{}, errors.New("relay: not a reflexive answer")
	}
	if hex.EncodeToString(p[5:5+udpTokenLen]) != token {
		return netip.AddrPort{}, errors.New("relay: reflexive answer for another token")
	}
	o := 5 + udpTokenLen
	port := binary.BigEndian.Uint16(p[o:])
	addr := netip.AddrFrom16([16]byte(p[o+2 : o+18])).Unmap()
	return netip.AddrPortFrom(addr, port), nil
}
