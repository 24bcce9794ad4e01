package identity

import (
	"net"
	"net/netip"
	"sync"

	"github.com/fogmesh/fogmesh/internal/clientip"
)

// Handshake gate refusals, reasons of the handshake failure metrics: a
// connection over a HandshakeGate bound is closed before any TLS work.
const (
	ReasonBusy       = "busy"        // the listener's bound of handshakes in progress
	ReasonSourceBusy = "source_busy" // the bound of one source address
)

// Defaults of HandshakeGate: a mesh port's peers are the site's and mesh's
// other agents, each keeping one session, so 256 handshakes at once is far
// above a reconnect storm while bounding what unauthenticated connections
// hold (a goroutine, buffers, a signature each) to a few tens of MiB. A
// source (an agent, a NAT in front of a site, a relay) gets a part of it, so
// one cannot take the whole budget: a quarter of it, since every peer
// reaching the agent through one relay (or one NAT) shares that address.
const (
	DefaultMaxHandshakes          = 256
	DefaultMaxHandshakesPerSource = 64
)

// HandshakeGate bounds the TLS handshakes a listener runs at once before
// its peers are authenticated: in all, and per source address (an IPv4
// address, or an IPv6 /64, which one host may hold whole). A server takes a
// slot with Enter before it starts a connection's handshake and frees it
// with the returned release once the handshake has finished or failed; a
// connection Enter refuses is closed at once. Safe for concurrent use.
type HandshakeGate struct {
	max, perSource int // -1: no bound

	mu       sync.Mutex
	total    int
	bySource map[string]int
}

// NewHandshakeGate returns a gate of max handshakes at once, perSource of
// them from one source. Zero means DefaultMaxHandshakes and
// DefaultMaxHandshakesPerSource, a negative bound none (as fogmesh's other
// negative limits), and perSource is at most max when both are bounds.
func NewHandshakeGate(max, perSource int) *HandshakeGate {
	if max == 0 {
		max = DefaultMaxHandshakes
	}
	if perSource == 0 {
		perSource = DefaultMaxHandshakesPerSource
	}
	if max < 0 {
		max = -1
	}
	if perSource < 0 {
		perSource = -1
	}
	if max >= 0 && perSource >= 0 {
		perSource = min(perSource, max)
	}
	return &HandshakeGate{max: max, perSource: perSource, bySource: map[string]int{}}
}

// Enter takes a slot for a connection from remote. It returns a release
// func (idempotent) and "", or nil and the refusal reason: ReasonBusy or
// ReasonSourceBusy.
func (g *HandshakeGate) Enter(remote net.Addr) (release func(), reason string) {
	src := sourceKey(remote)
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case g.max >= 0 && g.total >= g.max:
		return nil, ReasonBusy
	case g.perSource >= 0 && g.bySource[src] >= g.perSource:
		return nil, ReasonSourceBusy
	}
	g.total++
	g.bySource[src]++
	var once sync.Once
	return func() { once.Do(func() { g.leave(src) }) }, ""
}

func (g *HandshakeGate) leave(src string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.total--
	if g.bySource[src]--; g.bySource[src] <= 0 {
		delete(g.bySource, src)
	}
}

// InProgress returns the handshakes holding a slot.
func (g *HandshakeGate) InProgress() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.total
}

// Load returns the handshakes holding a slot, in all and from remote's
// source: a server may ask more of a peer (QUIC address validation)
// before the gate is full.
func (g *HandshakeGate) Load(remote net.Addr) (total, source int) {
	src := sourceKey(remote)
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.total, g.bySource[src]
}

// Limits returns the gate's bounds, in all and per source; -1 is none.
func (g *HandshakeGate) Limits() (max, perSource int) { return g.max, g.perSource }

// sourceKey is the source a connection counts against: its IP address
// (an IPv6 one's /64: clientip.Key), or the whole address when it has none (an
// in-memory network's).
func sourceKey(a net.Addr) string {
	if a == nil {
		return ""
	}
	var ip netip.Addr
	switch a := a.(type) {
	case *net.TCPAddr:
		ip, _ = netip.AddrFromSlice(a.IP)
	default:
		ap, err := netip.ParseAddrPort(a.String())
		if err != nil {
			return a.Network() + "/" + a.String()
		}
		ip = ap.Addr()
	}
	return clientip.Key(ip).String()
}
