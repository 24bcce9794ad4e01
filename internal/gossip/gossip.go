// Package gossip runs SWIM-style liveness gossip (hashicorp/memberlist)
// among the agents of one site, so that a node that dies — also silently,
// frozen or powered off, with no RST — is known dead to its site in under a
// second, without waiting for the control plane (which may be far away or
// unreachable). It reports only liveness; configuration still comes from
// the control plane.
package gossip

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Config configures a member.
type Config struct {
	Name string // node name, unique in the site
	// BindAddr is host:port for UDP and TCP (port 0 picks one), and the
	// address the member gossips as: not a wildcard address.
	BindAddr string
	// OnChange is called when a member joins (alive) or leaves or dies. It
	// is called from one goroutine at a time and must not block.
	OnChange func(name string, alive bool)
	// SecretKey, if set (16, 24 or 32 bytes), encrypts and authenticates
	// every gossip packet (AES-GCM): members without the key are not
	// heard. Nil: plaintext (insecure mode).
	SecretKey []byte
	// Allow, if set, is asked about every other member announced alive —
	// by itself when it joins or refutes, or by any member passing on what
	// it knows — with the name and the address:port it gossips on. A
	// member it returns an error for is not heard: not added, not updated,
	// never reported to OnChange, never probed. Without it any process
	// that can send to BindAddr (with SecretKey: any holder of the key)
	// adds members of any name at any address. It is called from
	// memberlist's goroutines, must be safe for concurrent use and must
	// not block. Nil allows every member.
	Allow  func(name string, addr netip.AddrPort) error
	Logger *slog.Logger // nil = discard
}

// Gossip is one member.
type Gossip struct {
	ml       *memberlist.Memberlist
	kr       *memberlist.Keyring // nil without a key
	tr       *joinTransport
	keyGrace time.Duration // KeyGrace; tests shorten it

	mu     sync.Mutex  // guards the following
	retire *time.Timer // drops the previous key when its grace ends
	closed bool
}

// KeyGrace is how long SetKey keeps accepting the previous key: long
// enough for every peer to get the new one from the control plane, short
// enough that a revoked node, which knows the previous key, is soon shut
// out even if the key never changes again.
const KeyGrace = time.Minute

type events struct{ f func(string, bool) }

func (e events) NotifyJoin(n *memberlist.Node)   { e.f(n.Name, true) }
func (e events) NotifyLeave(n *memberlist.Node)  { e.f(n.Name, false) }
func (e events) NotifyUpdate(n *memberlist.Node) {}

// allowAlive is the memberlist.AliveDelegate asking Config.Allow.
type allowAlive struct {
	self  string
	allow func(string, netip.AddrPort) error
}

func (d allowAlive) NotifyAlive(n *memberlist.Node) error {
	if n.Name == d.self {
		return nil // memberlist refutes or ignores claims about us
	}
	ip, ok := netip.AddrFromSlice(n.Addr)
	if !ok {
		return fmt.Errorf("member %q: address %v", n.Name, n.Addr)
	}
	return d.allow(n.Name, netip.AddrPortFrom(ip.Unmap(), n.Port))
}

// New starts a member; it knows no peers until Join.
func New(cfg Config) (*Gossip, error) {
	host, port, err := net.SplitHostPort(cfg.BindAddr)
	if err != nil {
		return nil, fmt.Errorf("gossip: bind address %q: %w", cfg.BindAddr, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return nil, fmt.Errorf("gossip: bind port %q: %w", port, err)
	}
	// The member gossips as the address it binds: a wildcard one would
	// have its peers probe 0.0.0.0, themselves, and take it for dead.
	if ip, err := netip.ParseAddr(host); host == "" || err == nil && ip.IsUnspecified() {
		return nil, fmt.Errorf("gossip: bind address %q: give the address the site's peers reach this node at, not a wildcard", cfg.BindAddr)
	}
	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.Name
	mc.BindAddr, mc.BindPort = host, p
	mc.AdvertiseAddr, mc.AdvertisePort = host, p
	// Sub-second failure detection within a site (LAN): probe every 150 ms,
	// suspect after a 75 ms probe timeout (plus indirect probes until the
	// interval ends), declare dead after SuspicionMult × max(1, log10(n)) ×
	// ProbeInterval (300 ms for up to 10 members). A dead member waits at
	// most two intervals for its turn to be probed in a small site, so it is
	// declared dead 0.45–0.75 s after it stops answering: well under the
	// second README promises, with room for a loaded machine.
	mc.ProbeInterval = 150 * time.Millisecond
	mc.ProbeTimeout = 75 * time.Millisecond
	mc.SuspicionMult = 2
	mc.GossipInterval = 50 * time.Millisecond
	mc.TCPTimeout = time.Second
	mc.DeadNodeReclaimTime = time.Second // a restarted node may rejoin under its name at once
	if cfg.OnChange == nil {
		cfg.OnChange = func(string, bool) {}
	}
	mc.Events = events{cfg.OnChange}
	if cfg.Allow != nil {
		mc.Alive = allowAlive{self: cfg.Name, allow: cfg.Allow}
	}
	if cfg.Logger != nil {
		mc.Logger = slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug)
	} else {
		mc.Logger = log.New(io.Discard, "", 0)
	}
	var kr *memberlist.Keyring
	if len(cfg.SecretKey) > 0 {
		if kr, err = memberlist.NewKeyring(nil, cfg.SecretKey); err != nil {
			return nil, fmt.Errorf("gossip: key: %w", err)
		}
		mc.Keyring = kr
	}
	tr, err := newJoinTransport(host, p, mc.Logger)
	if err != nil {
		return nil, fmt.Errorf("gossip: %w", err)
	}
	if p == 0 { // advertise the port actually bound
		p = tr.GetAutoBindPort()
		mc.BindPort, mc.AdvertisePort = p, p
	}
	mc.Transport = tr
	ml, err := memberlist.Create(mc)
	if err != nil {
		tr.Shutdown()
		return nil, fmt.Errorf("gossip: %w", err)
	}
	return &Gossip{ml: ml, kr: kr, tr: tr, keyGrace: KeyGrace}, nil
}

// SetKey makes key the one used to send, keeping the previous one for
// receiving for KeyGrace (peers switch at slightly different times);
// older keys are dropped. It fails on a member created without a key.
func (g *Gossip) SetKey(key []byte) error {
	kr := g.kr
	if kr == nil {
		return errors.New("gossip: member has no keyring (started without a key)")
	}
	prev := kr.GetPrimaryKey()
	if err := kr.AddKey(key); err != nil {
		return fmt.Errorf("gossip: key: %w", err)
	}
	if err := kr.UseKey(key); err != nil {
		return fmt.Errorf("gossip: key: %w", err)
	}
	for _, k := range kr.GetKeys() {
		if !bytes.Equal(k, key) && !bytes.Equal(k, prev) {
			kr.RemoveKey(k)
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.retire != nil {
		g.retire.Stop()
		g.retire = nil
	}
	if !g.closed && prev != nil && !bytes.Equal(prev, key) {
		g.retire = time.AfterFunc(g.keyGrace, func() { // retirePreviousKey
			if bytes.Equal(kr.GetPrimaryKey(), key) {
				kr.RemoveKey(prev)
			}
		})
	}
	return nil
}

// Addr is the member's address (host:port).
func (g *Gossip) Addr() string { return g.ml.LocalNode().FullAddress().Addr }

// Join contacts peers; it returns how many answered. Close ends it.
func (g *Gossip) Join(addrs []string) (int, error) { return g.ml.Join(addrs) }

// Ping sends one ping to the member name at addr (an IP address and port)
// and waits for its answer, at most the probe timeout (75 ms). It returns
// nil if the member answered.
func (g *Gossip) Ping(name, addr string) error {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return fmt.Errorf("gossip: ping %s: %w", name, err)
	}
	if _, err := g.ml.Ping(name, net.UDPAddrFromAddrPort(ap)); err != nil {
		return fmt.Errorf("gossip: ping %s at %s: %w", name, addr, err)
	}
	return nil
}

// Members returns the names of the members known alive.
func (g *Gossip) Members() []string {
	var out []string
	for _, m := range g.ml.Members() {
		out = append(out, m.Name)
	}
	return out
}

// Close leaves the group (so peers learn at once) and stops. It is safe to
// call more than once.
func (g *Gossip) Close() error {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return nil
	}
	g.closed = true
	if g.retire != nil {
		g.retire.Stop()
	}
	g.mu.Unlock()
	g.tr.stop() // a Join in progress returns
	g.ml.Leave(500 * time.Millisecond)
	return g.ml.Shutdown()
}
