package meshdns

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"time"

	"github.com/miekg/dns"
)

// SetTimeoutsForTest shortens the TCP client timeouts and the per-upstream
// timeout. Call it before Serve.
func (s *Server) SetTimeoutsForTest(read, write, idle, upstream time.Duration) {
	s.readTimeout, s.writeTimeout, s.idleTimeout = read, write, idle
	s.h.upstreamTimeout = upstream
}

// HandlerForTest answers raw packets like a Server does, without sockets.
type HandlerForTest struct{ h *handler }

// NewHandlerForTest returns a HandlerForTest for cfg. Unlike New, a nil
// cfg.Upstreams means no upstreams: it never reads resolv.conf.
func NewHandlerForTest(cfg Config, r Resolver) (*HandlerForTest, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &HandlerForTest{h: newHandler(context.Background(), &cfg, r, cfg.Upstreams)}, nil
}

// ServePacketForTest runs packet through the steps dns.Server takes for a
// UDP datagram — header check, MsgAcceptFunc, unpack, Handler — and
// returns the reply, or nil if the server would send none.
func (t *HandlerForTest) ServePacketForTest(packet []byte) (*dns.Msg, error) {
	if len(packet) < 12 {
		t.h.invalidMsg(packet, dns.ErrShortRead)
		return nil, nil
	}
	dh := dns.Header{
		Id:      binary.BigEndian.Uint16(packet[0:]),
		Bits:    binary.BigEndian.Uint16(packet[2:]),
		Qdcount: binary.BigEndian.Uint16(packet[4:]),
		Ancount: binary.BigEndian.Uint16(packet[6:]),
		Nscount: binary.BigEndian.Uint16(packet[8:]),
		Arcount: binary.BigEndian.Uint16(packet[10:]),
	}
	req := new(dns.Msg)
	switch t.h.acceptMsg(dh) {
	case dns.MsgAccept:
		if err := req.Unpack(packet); err != nil {
			t.h.invalidMsg(packet, err)
			return formErrForTest(dh.Id), nil
		}
	case dns.MsgIgnore:
		return nil, nil
	default:
		return formErrForTest(dh.Id), nil
	}
	w := &recorder{}
	t.h.ServeDNS(w, req)
	return w.msg, w.err
}

func formErrForTest(id uint16) *dns.Msg {
	m := new(dns.Msg)
	m.Id = id
	m.Response = true
	m.Rcode = dns.RcodeFormatError
	return m
}

// recorder is a dns.ResponseWriter for a UDP client that keeps the reply
// after checking that it packs.
type recorder struct {
	msg *dns.Msg
	err error
}

func (w *recorder) LocalAddr() net.Addr { return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53} }
func (w *recorder) RemoteAddr() net.Addr {
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
}
func (w *recorder) WriteMsg(m *dns.Msg) error {
	w.msg = m
	_, w.err = m.Pack()
	return w.err
}
func (w *recorder) Write([]byte) (int, error) { panic("meshdns: handler must use WriteMsg") }
func (w *recorder) Close() error              { return nil }
func (w *recorder) TsigStatus() error         { return nil }
func (w *recorder) TsigTimersOnly(bool)       {}
func (w *recorder) Hijack()                   {}

// ParseClusterNameForTest exposes parseClusterName to the fuzz target.
func ParseClusterNameForTest(rel string) (host, svc, ns, port string, ok bool) {
	n, ok := parseClusterName(rel)
	return n.host, n.svc, n.ns, n.port, ok
}

// MaxTCPConnsForTest is the cap on TCP connections served at once.
const MaxTCPConnsForTest = maxTCPConns

// IsSelfForTest exposes isSelf with a fixed list of local addresses.
func IsSelfForTest(upstream, bound string, local []netip.Addr) bool {
	ap := netip.MustParseAddrPort(bound)
	return isSelf(upstream, net.TCPAddrFromAddrPort(ap), func() []netip.Addr { return local })
}

// SetForwardClientsForTest sets the cap on the clients whose forwarding
// rate is tracked. Call it before Serve.
func (s *Server) SetForwardClientsForTest(n int) {
	for i := range s.h.lim {
		if r := s.h.lim[i].rate; r != nil {
			r.max = n
		}
	}
}

// ForwardClientsForTest returns the number of clients tracked.
func (s *Server) ForwardClientsForTest() int { return s.h.lim[0].rate.len() }

// ForwardClientTrackedForTest reports whether client has a bucket.
func (s *Server) ForwardClientTrackedForTest(client netip.Addr) bool {
	return s.h.lim[0].rate.tracked(client)
}

// MaxForwardClientsForTest is the cap on the clients tracked.
const MaxForwardClientsForTest = maxForwardClients

// ClientLimitsForTest exposes the per-client buckets with a clock of the
// test's.
type ClientLimitsForTest struct{ l *clientLimits }

func NewClientLimitsForTest(perSecond, burst, max int, now func() time.Time) ClientLimitsForTest {
	return ClientLimitsForTest{newClientLimitsAt(perSecond, burst, max, now)}
}

func (t ClientLimitsForTest) Allow(client netip.Addr) bool   { return t.l.allow(client) }
func (t ClientLimitsForTest) Len() int                       { return t.l.len() }
func (t ClientLimitsForTest) Tracked(client netip.Addr) bool { return t.l.tracked(client) }

// ForwardsInFlightForTest returns client's forwards in flight.
func (s *Server) ForwardsInFlightForTest(client netip.Addr) int {
	s.h.lim[0].inFlight.mu.Lock()
	defer s.h.lim[0].inFlight.mu.Unlock()
	return s.h.lim[0].inFlight.n[client]
}

// MaxForwardsForTest is the cap on forwards in flight.
const MaxForwardsForTest = maxForwards

// ClientKeyForTest is the key of a query's sender in the per-client limits.
func ClientKeyForTest(from net.Addr) netip.Addr { return clientAddr(from) }
