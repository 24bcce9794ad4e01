package meshdns

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"
)

const (
	// ednsUDPSize is the EDNS(0) payload size the server advertises: the
	// 2020 DNS flag day value, which avoids IP fragmentation.
	ednsUDPSize = 1232

	// udpReadSize is the read buffer for one query datagram. Queries are
	// small; larger datagrams are cut and then fail to unpack.
	udpReadSize = 4096

	// soaSerial is the serial of the synthetic SOA. Nothing transfers the
	// zone, so it never needs to change.
	soaSerial = 1

	// defaultUpstreamTimeout bounds one exchange with one upstream.
	defaultUpstreamTimeout = 2 * time.Second

	// maxForwards bounds the forwards in flight; queries beyond it get
	// SERVFAIL at once instead of piling up sockets and goroutines.
	maxForwards = 256
)

// handler answers DNS queries. It owns no sockets: Server feeds it through
// dns.Server, tests and FuzzHandle call it directly.
type handler struct {
	zone      string // lowercase FQDN, e.g. "mesh."
	cluster   string // lowercase FQDN, e.g. "cluster.local."; "" for none
	ttl       uint32
	defaultNS string
	resolver  Resolver
	log       *slog.Logger
	metrics   *serverMetrics

	upstreams       []string // host:port, tried in order
	upstreamTimeout time.Duration
	forwardSem      chan struct{} // one token per forward in flight
	// lim holds the per-client limits on forwards, apart for UDP (0) and
	// TCP (1): a spoofed UDP source cannot use up a client's TCP budget.
	lim [2]forwardLimits

	// ctx is canceled when the server shuts down; it aborts forwards so
	// that shutdown does not wait for silent upstreams.
	ctx context.Context
}

// newHandler returns a handler for a validated cfg forwarding to upstreams.
func newHandler(ctx context.Context, cfg *Config, r Resolver, upstreams []string) *handler {
	return &handler{
		zone:            cfg.Zone,
		cluster:         cfg.ClusterDomain,
		ttl:             cfg.TTL,
		defaultNS:       cfg.DefaultNamespace,
		resolver:        r,
		log:             cfg.Logger,
		metrics:         newServerMetrics(cfg.Metrics),
		upstreams:       upstreams,
		upstreamTimeout: defaultUpstreamTimeout,
		forwardSem:      make(chan struct{}, maxForwards),
		lim: [2]forwardLimits{{rate: newClientLimits(cfg.ForwardRate, maxForwardClients)},
			{rate: newClientLimits(cfg.ForwardRate, maxForwardClients)}},
		ctx: ctx,
	}
}

var _ dns.Handler = (*handler)(nil)

// ServeDNS implements dns.Handler: it answers req from the zone or forwards
// it, counts the result and writes the reply, truncated to what a UDP
// client can take.
func (h *handler) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	resp, res := h.answer(req)
	if res == resultForward {
		resp, res = h.forward(h.ctx, w.RemoteAddr(), req)
	}
	h.metrics.count(res)
	if _, isUDP := w.RemoteAddr().(*net.UDPAddr); isUDP {
		resp.Truncate(clientUDPSize(req))
	} else {
		// Compresses a reply that would not fit a TCP message, and cuts
		// it (TC) if even that is too large: an unpackable reply is none.
		resp.Truncate(dns.MaxMsgSize)
	}
	if err := w.WriteMsg(resp); err != nil {
		h.log.Debug("meshdns: write reply", "client", w.RemoteAddr(), "err", err)
	}
}

// acceptMsg is the dns.Server's MsgAcceptFunc. It is dns.DefaultMsgAcceptFunc
// except that it lets a query with a question count other than 1 through,
// so that answer rejects it and the rejection is counted.
func (h *handler) acceptMsg(dh dns.Header) dns.MsgAcceptAction {
	dh.Qdcount = 1
	action := dns.DefaultMsgAcceptFunc(dh)
	switch action {
	case dns.MsgReject:
		h.metrics.count(resultFormErr)
	case dns.MsgRejectNotImplemented:
		h.metrics.count(resultNotImp)
	}
	return action
}

// invalidMsg is the dns.Server's MsgInvalidFunc, called for every packet that
// does not unpack.
func (h *handler) invalidMsg(_ []byte, _ error) {
	h.metrics.invalid.Inc()
}

// answer builds the reply to req from the zone. For a name outside the zone
// it returns (nil, resultForward) and the caller forwards req. It does no I/O
// beyond calling the Resolver (a Fetcher may wait for its control plane).
func (h *handler) answer(req *dns.Msg) (*dns.Msg, result) {
	resp := new(dns.Msg)
	if req.Opcode != dns.OpcodeQuery {
		resp.SetRcode(req, dns.RcodeNotImplemented)
		return resp, resultNotImp
	}
	if len(req.Question) != 1 {
		resp.SetRcodeFormatError(req)
		return resp, resultFormErr
	}
	opts := 0
	for _, rr := range req.Extra {
		if rr.Header().Rrtype == dns.TypeOPT {
			opts++
		}
	}
	if opts > 1 { // RFC 6891 §6.1.1
		resp.SetRcodeFormatError(req)
		return resp, resultFormErr
	}
	if opt := req.IsEdns0(); opt != nil && opt.Version() != 0 { // RFC 6891 §6.1.3
		resp.SetReply(req)
		resp.SetEdns0(ednsUDPSize, opt.Do())
		resp.Rcode = dns.RcodeBadVers
		return resp, resultFormErr
	}
	q := req.Question[0]
	q.Name = dns.Fqdn(q.Name)
	name := strings.ToLower(q.Name)
	zone, inCluster := h.zone, false
	var n meshName
	switch {
	case dns.IsSubDomain(h.zone, name):
	case h.cluster != "" && dns.IsSubDomain(h.cluster, name):
		// Not authoritative here: only the names of services this agent
		// knows are answered; the rest go to the cluster's DNS upstream.
		var ok bool
		if n, ok = parseClusterName(strings.TrimSuffix(name, h.cluster)); !ok {
			return nil, resultForward
		}
		zone, inCluster = h.cluster, true
	default:
		return nil, resultForward
	}

	resp.SetReply(req)
	resp.RecursionAvailable = len(h.upstreams) > 0
	if opt := req.IsEdns0(); opt != nil {
		resp.SetEdns0(ednsUDPSize, opt.Do())
	}
	if q.Qclass != dns.ClassINET && q.Qclass != dns.ClassANY {
		if inCluster {
			return nil, resultForward
		}
		resp.Rcode = dns.RcodeRefused
		return resp, resultRefused
	}
	resp.Authoritative = true

	if name == zone {
		if q.Qtype == dns.TypeSOA || q.Qtype == dns.TypeANY {
			resp.Answer = []dns.RR{h.soa(zone)}
			return resp, resultAnswer
		}
		return h.noData(resp, zone)
	}

	if !inCluster {
		var ok bool
		if n, ok = h.parseName(strings.TrimSuffix(name, "."+h.zone)); !ok {
			return h.nxDomain(resp, zone)
		}
	}
	rec, ok := h.resolver.LookupService(n.ns, n.svc)
	if f, fetch := h.resolver.(Fetcher); !ok && fetch {
		var err error
		if rec, ok, err = f.FetchService(h.ctx, n.ns, n.svc); err != nil {
			h.log.Debug("meshdns: service not known in time", "name", q.Name, "err", err)
			if inCluster {
				return nil, resultForward
			}
			resp.Rcode = dns.RcodeServerFailure
			return resp, resultServFail
		}
	}
	if !ok {
		if inCluster {
			return nil, resultForward
		}
		return h.nxDomain(resp, zone)
	}
	if rec.Unavailable != "" {
		resp.Authoritative = false
		resp.Rcode = dns.RcodeServerFailure
		if opt := resp.IsEdns0(); opt != nil {
			opt.Option = append(opt.Option, &dns.EDNS0_EDE{InfoCode: dns.ExtendedErrorCodeNotReady, ExtraText: truncate(rec.Unavailable, 200)})
		}
		return resp, resultServFail
	}
	if n.ent {
		// _tcp.<svc>: an empty non-terminal when a port name is below it.
		for _, p := range rec.Ports {
			if isLabel(strings.ToLower(p.Name)) && p.Port > 0 && p.Port <= 0xffff {
				return h.noData(resp, zone)
			}
		}
		return h.nxDomain(resp, zone)
	}
	if n.host != "" {
		// An instance of a headless service, by its hostname.
		var addrs []netip.Addr
		if rec.Headless {
			for _, e := range rec.Endpoints {
				if e.Hostname == n.host {
					addrs = append(addrs, e.Addr)
				}
			}
		}
		if len(addrs) == 0 {
			if inCluster {
				return nil, resultForward
			}
			return h.nxDomain(resp, zone)
		}
		if q.Qtype == dns.TypeA || q.Qtype == dns.TypeAAAA {
			resp.Answer = h.addrs(q.Name, addrs, q.Qtype)
		}
		if len(resp.Answer) == 0 {
			return h.noData(resp, zone)
		}
		return resp, resultAnswer
	}
	ports := rec.Ports
	if n.port != "" {
		ports = nil
		for _, p := range rec.Ports {
			if strings.EqualFold(p.Name, n.port) {
				ports = []Port{p}
				break
			}
		}
		if ports == nil {
			return h.nxDomain(resp, zone)
		}
	}

	suffix := "." + n.ns + "." + zone
	if inCluster {
		suffix = "." + n.ns + ".svc." + zone
	}
	target := n.svc + suffix
	addrs := []netip.Addr{rec.V4, rec.V6}
	if rec.Headless {
		addrs = addrs[:0]
		for _, e := range rec.Endpoints {
			addrs = append(addrs, e.Addr)
		}
	}
	switch {
	case q.Qtype == dns.TypeSRV && rec.Headless:
		// One SRV per port and named instance, and one per port to the
		// service's name for the instances without a hostname.
		byTarget := map[string][]netip.Addr{}
		var targets []string
		for _, e := range rec.Endpoints {
			t := target
			if e.Hostname != "" && isLabel(e.Hostname) {
				t = e.Hostname + "." + n.svc + suffix
			}
			if _, seen := byTarget[t]; !seen {
				targets = append(targets, t)
			}
			byTarget[t] = append(byTarget[t], e.Addr)
		}
		for _, t := range targets {
			rrs := h.srvs(q.Name, t, ports)
			if len(rrs) == 0 {
				continue
			}
			resp.Answer = append(resp.Answer, rrs...)
			resp.Extra = append(resp.Extra, h.addrs(t, byTarget[t], dns.TypeA)...)
			resp.Extra = append(resp.Extra, h.addrs(t, byTarget[t], dns.TypeAAAA)...)
		}
	case q.Qtype == dns.TypeSRV:
		resp.Answer = h.srvs(q.Name, target, ports)
		if len(resp.Answer) > 0 {
			resp.Extra = append(resp.Extra, h.addrs(target, addrs, dns.TypeA)...)
			resp.Extra = append(resp.Extra, h.addrs(target, addrs, dns.TypeAAAA)...)
		}
	case n.port == "" && (q.Qtype == dns.TypeA || q.Qtype == dns.TypeAAAA):
		resp.Answer = h.addrs(q.Name, addrs, q.Qtype)
	case n.port == "" && q.Qtype == dns.TypeANY: // a subset: RFC 8482 §4.1
		resp.Answer = append(h.addrs(q.Name, addrs, dns.TypeA), h.addrs(q.Name, addrs, dns.TypeAAAA)...)
	}
	if len(resp.Answer) == 0 {
		return h.noData(resp, zone)
	}
	return resp, resultAnswer
}

// meshName is a parsed name inside the zone.
type meshName struct {
	svc, ns string
	port    string // from _<port>._tcp; empty if none
	host    string // an instance's hostname (<host>.<svc>.<ns>); empty if none
	ent     bool   // _tcp.<svc>[.<ns>], the empty non-terminal above the port names
}

// parseName parses rel, a lowercase name relative to the zone without a
// trailing dot: svc, svc.ns, _port._tcp.svc or _port._tcp.svc.ns.
func (h *handler) parseName(rel string) (meshName, bool) {
	labels := strings.Split(rel, ".")
	var n meshName
	if len(labels) >= 3 && strings.HasPrefix(labels[0], "_") && labels[1] == "_tcp" {
		n.port = labels[0][1:]
		if !isLabel(n.port) {
			return meshName{}, false
		}
		labels = labels[2:]
	} else if (len(labels) == 2 || len(labels) == 3) && labels[0] == "_tcp" {
		n.ent, labels = true, labels[1:]
	}
	switch len(labels) {
	case 1:
		n.svc, n.ns = labels[0], h.defaultNS
	case 2:
		n.svc, n.ns = labels[0], labels[1]
	case 3:
		if n.port != "" || n.ent || !isLabel(labels[0]) {
			return meshName{}, false
		}
		n.host, n.svc, n.ns = labels[0], labels[1], labels[2]
	default:
		return meshName{}, false
	}
	if !isLabel(n.svc) || !isLabel(n.ns) {
		return meshName{}, false
	}
	return n, true
}

// parseClusterName parses rel, a lowercase cluster name without the
// cluster domain but with the dot before it: "svc.ns.svc." or
// "_port._tcp.svc.ns.svc." or "host.svc.ns.svc.". Anything else (pod names, bare namespaces,
// escaped or odd bytes) is not a service name.
func parseClusterName(rel string) (meshName, bool) {
	rel, ok := strings.CutSuffix(rel, ".svc.")
	if !ok {
		return meshName{}, false
	}
	labels := strings.Split(rel, ".")
	var n meshName
	if len(labels) == 4 && strings.HasPrefix(labels[0], "_") && labels[1] == "_tcp" {
		n.port = labels[0][1:]
		if !isLabel(n.port) {
			return meshName{}, false
		}
		labels = labels[2:]
	}
	if len(labels) == 3 && n.port == "" && isLabel(labels[0]) {
		n.host, labels = labels[0], labels[1:]
	}
	if len(labels) != 2 || !isLabel(labels[0]) || !isLabel(labels[1]) {
		return meshName{}, false
	}
	n.svc, n.ns = labels[0], labels[1]
	return n, true
}

// isLabel reports whether s is a DNS label fit for a service, namespace or
// port name: 1 to 63 of [a-z0-9-]. Escaped or odd bytes never reach the
// Resolver.
func isLabel(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// addrs returns the addresses of type qtype (A or AAAA) among addrs as
// records named name, without duplicates, or nil if there are none.
// Invalid (zero) addresses are skipped.
func (h *handler) addrs(name string, addrs []netip.Addr, qtype uint16) []dns.RR {
	hdr := dns.RR_Header{Name: name, Rrtype: qtype, Class: dns.ClassINET, Ttl: h.ttl}
	var rrs []dns.RR
	seen := map[netip.Addr]bool{}
	for _, a := range addrs {
		a = a.Unmap()
		if !a.IsValid() || seen[a] {
			continue
		}
		seen[a] = true
		switch {
		case qtype == dns.TypeA && a.Is4():
			b := a.As4()
			rrs = append(rrs, &dns.A{Hdr: hdr, A: net.IP(b[:])})
		case qtype == dns.TypeAAAA && a.Is6():
			b := a.As16()
			rrs = append(rrs, &dns.AAAA{Hdr: hdr, AAAA: net.IP(b[:])})
		}
	}
	return rrs
}

// srvs returns one SRV record named name per valid port, all pointing at
// target.
func (h *handler) srvs(name, target string, ports []Port) []dns.RR {
	rrs := make([]dns.RR, 0, len(ports))
	for _, p := range ports {
		if p.Port <= 0 || p.Port > 0xffff {
			continue
		}
		rrs = append(rrs, &dns.SRV{
			Hdr:      dns.RR_Header{Name: name, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: h.ttl},
			Priority: 0,
			Weight:   1,
			Port:     uint16(p.Port),
			Target:   target,
		})
	}
	return rrs
}

// soa returns the zone's synthetic SOA. Its minimum, the negative-caching
// TTL, is the record TTL, so a new service is found as soon as a cached
// positive answer would have expired.
func (h *handler) soa(zone string) *dns.SOA {
	return &dns.SOA{
		Hdr:     dns.RR_Header{Name: zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: h.ttl},
		Ns:      "ns.dns." + zone,
		Mbox:    "hostmaster." + zone,
		Serial:  soaSerial,
		Refresh: 7200,
		Retry:   1800,
		Expire:  86400,
		Minttl:  h.ttl,
	}
}

func (h *handler) noData(resp *dns.Msg, zone string) (*dns.Msg, result) {
	resp.Ns = []dns.RR{h.soa(zone)}
	return resp, resultNoData
}

func (h *handler) nxDomain(resp *dns.Msg, zone string) (*dns.Msg, result) {
	resp.Rcode = dns.RcodeNameError
	resp.Ns = []dns.RR{h.soa(zone)}
	return resp, resultNXDomain
}

// clientUDPSize is the largest UDP reply the server sends to the sender of
// req: what its OPT record accepts, but never more than the ednsUDPSize the
// server advertises (RFC 6891 §6.2.5 leaves the cap to the responder). A
// query of 40 bytes claiming 65535 would otherwise draw a reply of up to
// 64 KiB to whatever source address it bears (amplification), and one
// that fragments; a client wanting more asks again over TCP (TC).
func clientUDPSize(req *dns.Msg) int {
	if opt := req.IsEdns0(); opt != nil && int(opt.UDPSize()) > dns.MinMsgSize {
		return min(int(opt.UDPSize()), ednsUDPSize)
	}
	return dns.MinMsgSize
}

// truncate cuts s to at most n bytes.
func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
