package identity

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/fogmesh/fogmesh/internal/clientip"
)

// Handshake gate refusals, reasons of the handshake failure metrics: a
// connection over a HandshakeGate bound is closed before any TLS work; an
// evicted one (the gate full, its source the busiest) is closed in its
// handshake.
const (
	ReasonBusy       = "busy"        // the listener's bound of handshakes in progress
	ReasonSourceBusy = "source_busy" // the bound of one source address
	ReasonEvicted    = "evicted"     // in its handshake, its slot given to a source holding fewer
)

// ErrEvicted is the error of a connection whose slot the gate evicted
// (ReasonEvicted): a server that finds its slot's Release or Pin false
// ends the connection with it, whatever its handshake's outcome.
var ErrEvicted = errors.New("evicted: its handshake slot given to a source holding fewer")

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
// with its Release once the handshake has finished or failed; a
// connection Enter refuses is closed at once. Safe for concurrent use.
//
// A full gate is shared fairly rather than first come, first served: a few
// sources opening connections that never send a ClientHello would
// otherwise hold every slot (max/perSource sources suffice) and lock every
// other client out until their handshakes time out. So when the total
// bound is reached, a newcomer whose source holds fewer slots than the
// busiest source minus one evicts that source's oldest handshake (its
// cancel closes the connection, counted as ReasonEvicted) and enters in
// its place; at equal shares (within one) nobody is evicted, so two
// sources never evict each other in turn.
type HandshakeGate struct {
	max, perSource int // -1: no bound

	mu      sync.Mutex
	total   int
	sources map[string]*gateSource
}

// gateSource is one source's slots: held counts them all; the entries a
// server can cancel are also on a list, oldest first, for eviction.
type gateSource struct {
	key        string
	held       int
	head, tail *gateEntry
}

// gateEntry is one slot.
type gateEntry struct {
	src        *gateSource
	cancel     func() // nil: cannot be evicted (not on src's list): entered so, or pinned
	prev, next *gateEntry
	gone       bool // released or evicted: its release is a no-op
	evicted    bool // its slot given to a newcomer: its release reports false
}

func (s *gateSource) push(e *gateEntry) {
	e.prev = s.tail
	if s.tail != nil {
		s.tail.next = e
	} else {
		s.head = e
	}
	s.tail = e
}

func (s *gateSource) unlink(e *gateEntry) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		s.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		s.tail = e.prev
	}
	e.prev, e.next = nil, nil
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
	return &HandshakeGate{max: max, perSource: perSource, sources: map[string]*gateSource{}}
}

// Enter takes a slot for a connection from remote. It returns the slot
// and "", or nil and the refusal reason: ReasonBusy or ReasonSourceBusy.
// cancel, if not nil, makes the slot evictable: the gate calls it (once,
// not under its lock, possibly before Enter returns to its caller's other
// goroutines) to end the connection's handshake when a fairer newcomer
// takes the slot (see HandshakeGate); the slot is then already counted as
// free, and its Release reports false. A server's cancel closes the raw
// connection and counts the handshake's failure as ReasonEvicted
// (Evictable). With a nil cancel the slot is never evicted.
//
// The slot is evicted under the gate's lock and its cancel runs after, so
// a connection whose handshake finishes meanwhile may still be closed: a
// server must serve a connection only if its Release (or Pin) reported
// the slot held, and treat false as evicted.
func (g *HandshakeGate) Enter(remote net.Addr, cancel func()) (*GateSlot, string) {
	key := sourceKey(remote)
	g.mu.Lock()
	src := g.sources[key]
	held := 0
	if src != nil {
		held = src.held
	}
	var victim *gateEntry
	switch {
	case g.max >= 0 && g.total >= g.max:
		if victim = g.evictable(held); victim == nil {
			g.mu.Unlock()
			return nil, ReasonBusy
		}
	case g.perSource >= 0 && held >= g.perSource:
		g.mu.Unlock()
		return nil, ReasonSourceBusy
	}
	var evict func()
	if victim != nil {
		// Its slot is the newcomer's: the total stays.
		victim.gone, victim.evicted = true, true
		evict = victim.cancel
		g.drop(victim)
	} else {
		g.total++
	}
	if src == nil { // (the victim's source is another: it held more)
		src = &gateSource{key: key}
		g.sources[key] = src
	}
	e := &gateEntry{src: src, cancel: cancel}
	src.held++
	if cancel != nil {
		src.push(e)
	}
	g.mu.Unlock()
	if evict != nil {
		evict()
	}
	return &GateSlot{g: g, e: e}, ""
}

// GateSlot is a connection's slot in a HandshakeGate. The methods of a nil
// GateSlot (a server with no gate) report the slot held.
type GateSlot struct {
	g *HandshakeGate
	e *gateEntry
}

// Release frees the slot (idempotent) and reports whether the connection
// kept it until then: false if the gate evicted it, whose cancel has run
// or is about to. A server serves the connection only on true; on false it
// closes it and counts ReasonEvicted.
func (s *GateSlot) Release() bool {
	if s == nil {
		return true
	}
	return s.g.leave(s.e)
}

// Evicted reports whether the gate evicted the slot (false for a nil
// one). Unlike Evictable.Evicted it is true as soon as the newcomer took
// the slot, before the cancel has closed the connection.
func (s *GateSlot) Evicted() bool {
	if s == nil {
		return false
	}
	s.g.mu.Lock()
	defer s.g.mu.Unlock()
	return s.e.evicted
}

// Pin makes the slot unevictable from now on, keeping it counted against
// its source until Release, and reports whether the connection still held
// it (false: it was evicted, or released). A server pins a slot once the
// connection has shown it deserves to finish (a join with a valid token),
// so the gate cannot close it half done.
func (s *GateSlot) Pin() bool {
	if s == nil {
		return true
	}
	g, e := s.g, s.e
	g.mu.Lock()
	defer g.mu.Unlock()
	if e.gone {
		return false
	}
	if e.cancel != nil {
		e.src.unlink(e)
		e.cancel = nil
	}
	return true
}

// evictable returns the oldest evictable entry of the busiest source that
// has one, if evicting it makes the gate fairer to a newcomer whose source
// holds held slots: held+1 < the busiest's count. O(sources), at most max.
func (g *HandshakeGate) evictable(held int) *gateEntry {
	var busiest *gateSource
	for _, s := range g.sources {
		if s.head != nil && (busiest == nil || s.held > busiest.held) {
			busiest = s
		}
	}
	if busiest == nil || held+1 >= busiest.held {
		return nil
	}
	return busiest.head
}

// drop takes e's slot off its source; g.mu is held. It does not change
// the total.
func (g *HandshakeGate) drop(e *gateEntry) {
	s := e.src
	if e.cancel != nil {
		s.unlink(e)
	}
	if s.held--; s.held <= 0 {
		delete(g.sources, s.key)
	}
}

// leave frees e's slot unless it is gone; it reports whether e was not
// evicted.
func (g *HandshakeGate) leave(e *gateEntry) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if e.gone { // released before, or evicted
		return !e.evicted
	}
	e.gone = true
	g.drop(e)
	g.total--
	return true
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
	key := sourceKey(remote)
	g.mu.Lock()
	defer g.mu.Unlock()
	if s := g.sources[key]; s != nil {
		source = s.held
	}
	return g.total, source
}

// Limits returns the gate's bounds, in all and per source; -1 is none.
func (g *HandshakeGate) Limits() (max, perSource int) { return g.max, g.perSource }

// Evictable is the cancel of a connection's HandshakeGate slot: Evict
// marks the connection evicted and closes it, so its handshake fails and
// the server counts that failure as ReasonEvicted (Reason) rather than
// what the closed connection's error looks like.
type Evictable struct {
	c       io.Closer
	evicted atomic.Bool
}

// NewEvictable returns the Evictable of c (the raw connection).
func NewEvictable(c io.Closer) *Evictable { return &Evictable{c: c} }

// Evict marks the connection evicted and closes it; Enter's cancel.
func (e *Evictable) Evict() {
	e.evicted.Store(true)
	e.c.Close()
}

// Evicted reports whether the gate evicted the connection (false for a
// nil Evictable).
func (e *Evictable) Evicted() bool { return e != nil && e.evicted.Load() }

// Reason returns ReasonEvicted if the connection was evicted, else reason
// (its handshake's failure).
func (e *Evictable) Reason(reason string) string {
	if e.Evicted() {
		return ReasonEvicted
	}
	return reason
}

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
