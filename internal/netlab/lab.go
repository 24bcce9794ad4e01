package netlab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/testenv"
)

// NATType is how a site's router maps and filters its nodes' traffic.
type NATType int

const (
	// EndpointIndependent maps one private address and port to one public
	// port whatever the destination (iptables MASQUERADE, which keeps the
	// source port when it is free). Like every Linux NAT it filters by
	// address and port: only the exact remote a mapping was made for may
	// answer through it.
	EndpointIndependent NATType = iota
	// Symmetric picks a new random public port for every destination
	// (MASQUERADE --random-fully): address-and-port-dependent mapping.
	Symmetric
	// NoUDP is EndpointIndependent but drops every outbound UDP packet,
	// like a firewall that allows only TCP out.
	NoUDP
)

func (t NATType) String() string {
	switch t {
	case EndpointIndependent:
		return "endpoint-independent"
	case Symmetric:
		return "symmetric"
	case NoUDP:
		return "no-udp"
	}
	return fmt.Sprintf("NATType(%d)", int(t))
}

// Comments of the iptables rules whose counters tests read with
// Netns.RuleCounter on a site's NAT namespace.
const (
	// RuleInboundForward drops a new connection from the public network
	// to a site's private address (a public host routing to it).
	RuleInboundForward = "netlab-inbound-forward"
	// RuleInboundLocal drops a new connection to the router's own public
	// address (no port is open or forwarded).
	RuleInboundLocal = "netlab-inbound-local"
	// RuleUDPDrop drops outbound UDP (NoUDP sites only).
	RuleUDPDrop = "netlab-udp-drop"
)

// Host is a namespace with one address: a public server or a site's node.
type Host struct {
	*Netns
	// Addr is the host's address on its network (public for the control
	// plane and relays, private for a site's node).
	Addr netip.Addr
}

// Site is a private network behind one NAT router.
type Site struct {
	Name string
	Type NATType
	// NAT is the router's namespace: interface wan0 on the public network,
	// bridge lan0 on the site's network.
	NAT *Netns
	// PublicAddr is the router's address on the public network: what the
	// site's traffic comes from, as the public network sees it.
	PublicAddr netip.Addr
	Subnet     netip.Prefix
	Gateway    netip.Addr // the router's address on the site's network
	Nodes      []*Host
}

// SetUplink sets the router's public interface up or down, as a cable
// pulled and plugged back in. Addresses, routes inside the site and NAT
// mappings (conntrack) survive.
func (s *Site) SetUplink(up bool) error {
	state := "down"
	if up {
		state = "up"
	}
	return s.NAT.ip("link set wan0 " + state)
}

// Lab is the test topology: a public network with the control plane and
// two relays, and four sites behind NAT routers. See the package doc.
type Lab struct {
	// ID is PREFIX-PID-RANDOM; every namespace's name starts with it.
	ID string
	// Public is the namespace of the public network's switch (bridge br0);
	// it has no address of its own.
	Public *Netns
	// CP and Relay1, Relay2 are public hosts.
	CP, Relay1, Relay2 *Host
	// A is behind an endpoint-independent NAT, B behind a symmetric one,
	// both on 192.168.1.0/24 with node address 192.168.1.2; C's NAT drops
	// outbound UDP; LAN has two nodes on one network behind one NAT.
	A, B, C, LAN *Site

	closeOnce sync.Once
	closeErr  error
	names     []string
}

// Options tunes Build. The zero value works.
type Options struct {
	// Prefix starts every namespace name; Sweep(Prefix) removes what a
	// killed run left. Default DefaultPrefix.
	Prefix string
}

// DefaultPrefix is the namespace name prefix when Options.Prefix is empty.
const DefaultPrefix = "fmnl"

// The public network: the test-net range reserved for documentation
// (RFC 5737), so no address here is anyone's real one. It is only ever
// reachable from inside the lab's namespaces.
var (
	publicNet = netip.MustParsePrefix("198.51.100.0/24")
	pubCP     = netip.MustParseAddr("198.51.100.10")
	pubRelay1 = netip.MustParseAddr("198.51.100.11")
	pubRelay2 = netip.MustParseAddr("198.51.100.12")
)

type siteSpec struct {
	name   string
	typ    NATType
	wan    string
	subnet string
	nodes  int
}

var siteSpecs = []siteSpec{
	{"a", EndpointIndependent, "198.51.100.21", "192.168.1.0/24", 1},
	{"b", Symmetric, "198.51.100.22", "192.168.1.0/24", 1},
	{"c", NoUDP, "198.51.100.23", "192.168.3.0/24", 1},
	{"l", EndpointIndependent, "198.51.100.24", "192.168.4.0/24", 2},
}

// New builds a Lab for the test and removes it when the test ends, passed,
// failed or panicked. It first sweeps what a killed run left (see Sweep). It skips the test (fails it in CI) when not root or
// when ip or iptables is missing.
func New(t testing.TB) *Lab {
	t.Helper()
	return NewWith(t, Options{})
}

// NewWith is New with options.
func NewWith(t testing.TB, opts Options) *Lab {
	t.Helper()
	testenv.NeedRoot(t)
	testenv.NeedTool(t, "ip")
	testenv.NeedTool(t, "iptables")
	testenv.NeedTool(t, "iptables-restore")
	prefix := opts.Prefix
	if prefix == "" {
		prefix = DefaultPrefix
	}
	// Leftovers of a killed run with this prefix; a live run's stay.
	if removed, err := Sweep(prefix); err != nil || len(removed) > 0 {
		t.Logf("netlab: removed namespaces of a killed run: %v (%v)", removed, err)
	}
	l, err := Build(opts)
	if l != nil {
		t.Cleanup(func() {
			if err := l.Close(); err != nil {
				t.Errorf("netlab: cleanup: %v", err)
			}
		})
	}
	if err != nil {
		t.Fatalf("netlab: %v", err)
	}
	return l
}

var labSeq atomic.Uint64

// Build makes the topology. On error it returns the partly built Lab too,
// so the caller can Close it (New does); callers outside tests (a bench
// program) must Close it.
func Build(opts Options) (*Lab, error) {
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	if strings.Contains(opts.Prefix, "/") {
		return nil, fmt.Errorf("netlab: prefix %q contains a slash", opts.Prefix)
	}
	var rnd [2]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, fmt.Errorf("netlab: %w", err)
	}
	// The PID keeps runs apart and lets Sweep tell a killed run's
	// namespaces from a live one's; the sequence keeps labs of one process
	// apart; the random part keeps a new process apart from a killed one's
	// leftovers that had the same PID.
	l := &Lab{ID: fmt.Sprintf("%s-%d-%d%s", opts.Prefix, os.Getpid(), labSeq.Add(1), hex.EncodeToString(rnd[:]))}
	newNS := func(role string) *Netns {
		ns := &Netns{Name: l.ID + "-" + role}
		l.names = append(l.names, ns.Name)
		return ns
	}
	l.Public = newNS("pub")
	pubHost := func(role string, a netip.Addr) *Host { return &Host{Netns: newNS(role), Addr: a} }
	l.CP = pubHost("cp", pubCP)
	l.Relay1 = pubHost("r1", pubRelay1)
	l.Relay2 = pubHost("r2", pubRelay2)
	var sites []*Site
	for _, sp := range siteSpecs {
		s := &Site{
			Name:       sp.name,
			Type:       sp.typ,
			NAT:        newNS("nat" + sp.name),
			PublicAddr: netip.MustParseAddr(sp.wan),
			Subnet:     netip.MustParsePrefix(sp.subnet),
		}
		s.Gateway = s.Subnet.Addr().Next()
		a := s.Gateway
		for i := range sp.nodes {
			a = a.Next()
			s.Nodes = append(s.Nodes, &Host{Netns: newNS(fmt.Sprintf("%s%d", sp.name, i+1)), Addr: a})
		}
		sites = append(sites, s)
	}
	l.A, l.B, l.C, l.LAN = sites[0], sites[1], sites[2], sites[3]

	if err := addNetns(l.names); err != nil {
		return l, err
	}
	if err := l.wire(sites); err != nil {
		return l, err
	}
	return l, l.waitRunning()
}

// waitRunning waits until every interface in the lab is running. The
// kernel turns a new link's carrier on in a batch up to a second later
// (linkwatch) and drops what the link sends before, so without this wait a
// test's first packet is lost and its first TCP dial takes a 1 s
// retransmission.
func (l *Lab) waitRunning() error {
	deadline := time.Now().Add(20 * time.Second)
	for _, name := range l.names {
		ns := &Netns{Name: name}
		err := ns.Do(func() error {
			for {
				ifs, err := net.Interfaces()
				if err != nil {
					return err
				}
				var down []string
				for _, i := range ifs {
					if i.Flags&net.FlagLoopback == 0 && i.Flags&net.FlagRunning == 0 {
						down = append(down, i.Name)
					}
				}
				if len(down) == 0 {
					return nil
				}
				if time.Now().After(deadline) {
					return fmt.Errorf("links %v not running", down)
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
		if err != nil {
			return fmt.Errorf("netns %s: %w", name, err)
		}
	}
	return nil
}

// wire configures the namespaces leaves first: each end of a veth is
// created inside the namespace that holds it, with its peer placed
// straight into the parent, so nothing ever appears in the host's
// namespace and interface names need only be unique per namespace.
func (l *Lab) wire(sites []*Site) error {
	bits := publicNet.Bits()
	pubLines := []string{"link set lo up", "link add br0 type bridge forward_delay 0", "link set br0 up"}
	attach := func(port string) {
		pubLines = append(pubLines, "link set "+port+" master br0", "link set "+port+" up")
	}
	for _, h := range []*Host{l.CP, l.Relay1, l.Relay2} {
		port := "v-" + role(l, h.Netns)
		if err := h.ip(
			"link set lo up",
			fmt.Sprintf("link add eth0 type veth peer name %s netns %s", port, l.Public.Name),
			fmt.Sprintf("addr add %s/%d dev eth0", h.Addr, bits),
			"link set eth0 up",
		); err != nil {
			return err
		}
		attach(port)
	}
	for _, s := range sites {
		natLines := []string{"link set lo up", "link add lan0 type bridge forward_delay 0", "link set lan0 up",
			fmt.Sprintf("addr add %s/%d dev lan0", s.Gateway, s.Subnet.Bits())}
		for _, n := range s.Nodes {
			port := "v-" + role(l, n.Netns)
			if err := n.ip(
				"link set lo up",
				fmt.Sprintf("link add eth0 type veth peer name %s netns %s", port, s.NAT.Name),
				fmt.Sprintf("addr add %s/%d dev eth0", n.Addr, s.Subnet.Bits()),
				"link set eth0 up",
				fmt.Sprintf("route add default via %s dev eth0 onlink", s.Gateway),
			); err != nil {
				return err
			}
			natLines = append(natLines, "link set "+port+" master lan0", "link set "+port+" up")
		}
		port := "v-" + role(l, s.NAT)
		natLines = append(natLines,
			fmt.Sprintf("link add wan0 type veth peer name %s netns %s", port, l.Public.Name),
			fmt.Sprintf("addr add %s/%d dev wan0", s.PublicAddr, bits),
			"link set wan0 up",
		)
		if err := s.NAT.ip(natLines...); err != nil {
			return err
		}
		attach(port)
		if err := s.configureNAT(); err != nil {
			return err
		}
	}
	return l.Public.ip(pubLines...)
}

// role is a namespace's name without the lab's ID: "cp", "nata", "a1".
func role(l *Lab, n *Netns) string { return strings.TrimPrefix(n.Name, l.ID+"-") }

// configureNAT turns forwarding on and loads the router's rules in one
// iptables-restore. The rules live in the router's namespace and go with
// it.
func (s *Site) configureNAT() error {
	if err := s.NAT.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644)
	}); err != nil {
		return fmt.Errorf("site %s: ip_forward: %w", s.Name, err)
	}
	masq := "-A POSTROUTING -o wan0 -j MASQUERADE"
	if s.Type == Symmetric {
		masq += " --random-fully"
	}
	filter := []string{
		// Nothing from the public network starts a connection into the
		// site or to the router; answers to the site's own traffic pass.
		"-A INPUT -i wan0 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
		"-A INPUT -i wan0 -m comment --comment " + RuleInboundLocal + " -j DROP",
		"-A FORWARD -i wan0 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
		"-A FORWARD -i wan0 -m comment --comment " + RuleInboundForward + " -j DROP",
	}
	if s.Type == NoUDP {
		filter = append(filter, "-A FORWARD -o wan0 -p udp -m comment --comment "+RuleUDPDrop+" -j DROP")
	}
	rules := "*nat\n" + masq + "\nCOMMIT\n*filter\n" + strings.Join(filter, "\n") + "\nCOMMIT\n"
	cmd := s.NAT.Command(context.Background(), "iptables-restore", "-w")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("site %s: iptables-restore: %w: %s\n%s", s.Name, err, out, rules)
	}
	return nil
}

// Namespaces returns the names of every namespace the Lab made.
func (l *Lab) Namespaces() []string { return append([]string(nil), l.names...) }

// Sites returns A, B, C and LAN.
func (l *Lab) Sites() []*Site { return []*Site{l.A, l.B, l.C, l.LAN} }

// Close kills the processes still running in the Lab's namespaces and
// removes the namespaces with everything in them. It is idempotent.
func (l *Lab) Close() error {
	l.closeOnce.Do(func() {
		var errs []error
		for _, name := range l.names {
			if err := deleteNetns(name); err != nil {
				errs = append(errs, err)
			}
		}
		l.closeErr = errors.Join(errs...)
	})
	return l.closeErr
}
