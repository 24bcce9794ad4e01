// Package capture redirects connections to Kubernetes ClusterIPs into the
// agent with nftables rules, so applications keep calling ClusterIPs and
// still go through the mesh. It exists apart from the agent so the rules
// and their lifecycle are testable alone, in a network namespace.
//
// # Rules
//
// Everything lives in one table the agent owns, inet fogmesh:
//
//	table inet fogmesh {
//		set dst4 { type ipv4_addr . inet_service }   # ClusterIP . port (TCP)
//		set dst6 { type ipv6_addr . inet_service }   # with Config.Port6
//		map udp4 { type ipv4_addr . inet_service : inet_service }   # UDP: ClusterIP . port : the agent's port
//		map udp6 { type ipv6_addr . inet_service : inet_service }   # with Config.Port6
//		set uports4 { type inet_service }   # the agent's ports in udp4
//		set uports6 { type inet_service }   # and in udp6, with Config.Port6
//		chain output     { type nat hook output     priority dstnat - 10; ... }
//		chain prerouting { type nat hook prerouting priority dstnat - 10; ... }
//		chain input { type filter hook input priority filter;
//			meta nfproto ipv4 meta l4proto udp udp dport @uports4 ct status & dnat == 0 drop
//			(and ipv6, @uports6) }
//	}
//
// Both chains hold a TCP and a UDP rule per family. A TCP packet whose
// destination address and port are in dst4 (dst6) is redirected to the
// agent's capture port for IPv4 (IPv6) (output: the node's own processes,
// to 127.0.0.1 or ::1; prerouting: pods behind a bridge or veth, to the
// address of the interface it came in on). The agent reads the original
// destination back with SO_ORIGINAL_DST (OriginalDst). A UDP socket
// cannot read it back, so a UDP packet is redirected to the port the map
// names for its destination, one per captured ClusterIP:port, where the
// agent holds a socket (PktConn) that replies from the address the
// datagram came to, which conntrack maps back to the ClusterIP. Such a
// socket binds every address (a pod's datagram arrives at the address of
// its interface) and cannot tell a redirected datagram from one sent
// straight to its port, by any host that reaches the node: the input
// chain drops a datagram to one of those ports that no redirect rewrote
// (the TCP listener tells them apart itself: Redirected).
//
// # Living beside kube-proxy
//
// kube-proxy keeps its own rules (iptables' nat table, or its nftables
// table ip kube-proxy) at priority dstnat (-100). Our chains run at -110,
// before it, whatever the order in which the two programs install or
// re-install their rules: netfilter walks nat chains in priority order,
// and once one has set up a destination NAT for a connection the later
// ones are skipped. So a ClusterIP:port in dst4 always comes to the agent,
// and every other one is left to kube-proxy; there is no rule ordering
// within a shared chain to race on (EdgeMesh inserts into kube-proxy's
// iptables chains and loses when kube-proxy rewrites them). Neither
// program ever flushes the other's table.
//
// # Lifecycle
//
// Install replaces the table in one netlink transaction (add it, delete
// it, add it again with its chains, set and rules), so the leftovers of a
// crashed agent are gone at the next start and there is no moment with
// both or neither. Sync replaces the set's elements in one transaction.
// Remove deletes the table; the agent calls it on exit.
package capture

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"slices"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// TableName is the name of the agent's nftables table (family inet).
const TableName = "fogmesh"

// Priority is the priority of the agent's nat chains: before kube-proxy's
// dstnat (-100), so they decide first (see the package doc).
const Priority = int32(-110)

// Config configures Install.
type Config struct {
	// Port is the agent's capture listener port (it listens on every
	// address: redirected packets from other namespaces arrive at the
	// address of their incoming interface). Required.
	Port uint16
	// Port6 is the IPv6 capture listener's port (it listens on [::]).
	// 0: IPv6 destinations are not captured (Sync skips them).
	Port6 uint16
	// NetNSFd, if not 0, installs the rules in the network namespace of
	// this file descriptor (tests); 0 is the caller's namespace.
	NetNSFd int
}

// ErrUnavailable wraps the errors that mean this node cannot capture:
// no permission (not root, no CAP_NET_ADMIN) or no nftables in the kernel.
// The agent then falls back to virtual IPs.
var ErrUnavailable = errors.New("transparent capture unavailable")

// Rules are the agent's installed rules. Its methods are safe for
// concurrent use.
type Rules struct {
	cfg Config

	mu    sync.Mutex // guards the following
	conn  *nftables.Conn
	table *nftables.Table
	set4  *nftables.Set
	set6  *nftables.Set    // nil without Port6
	dests []netip.AddrPort // in dst4 and dst6 now, sorted
	gone  bool             // Remove was called
	// UDP: maps of ClusterIP . port to the agent's port for it.
	udp4, udp6 *nftables.Set // udp6 nil without Port6
	udpDests   map[netip.AddrPort]uint16
	// The ports udpDests map to, per family (another family's socket may
	// hold the same number): only redirected datagrams reach them.
	uports4, uports6 *nftables.Set // uports6 nil without Port6
}

// Install removes a leftover table of a previous run and installs the
// agent's table with an empty set, in one transaction.
func Install(cfg Config) (*Rules, error) {
	if cfg.Port == 0 {
		return nil, errors.New("capture: install: no port")
	}
	conn, err := dial(cfg.NetNSFd)
	if err != nil {
		return nil, err
	}
	r := &Rules{cfg: cfg, conn: conn}
	r.table = &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
	// Add then delete: the delete succeeds whether or not a crashed run
	// left the table, and the whole batch is one transaction.
	conn.AddTable(r.table)
	conn.DelTable(r.table)
	conn.AddTable(r.table)
	r.set4 = &nftables.Set{Table: r.table, Name: "dst4", Concatenation: true,
		KeyType: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService)}
	if err := conn.AddSet(r.set4, nil); err != nil {
		return nil, fmt.Errorf("capture: install: set: %w", err)
	}
	if cfg.Port6 != 0 {
		r.set6 = &nftables.Set{Table: r.table, Name: "dst6", Concatenation: true,
			KeyType: nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetService)}
		if err := conn.AddSet(r.set6, nil); err != nil {
			return nil, fmt.Errorf("capture: install: set: %w", err)
		}
	}
	r.udp4 = &nftables.Set{Table: r.table, Name: "udp4", Concatenation: true, IsMap: true,
		KeyType: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService), DataType: nftables.TypeInetService}
	if err := conn.AddSet(r.udp4, nil); err != nil {
		return nil, fmt.Errorf("capture: install: map: %w", err)
	}
	if cfg.Port6 != 0 {
		r.udp6 = &nftables.Set{Table: r.table, Name: "udp6", Concatenation: true, IsMap: true,
			KeyType: nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetService), DataType: nftables.TypeInetService}
		if err := conn.AddSet(r.udp6, nil); err != nil {
			return nil, fmt.Errorf("capture: install: map: %w", err)
		}
	}
	in := conn.AddChain(&nftables.Chain{Name: "input", Table: r.table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter})
	r.uports4 = &nftables.Set{Table: r.table, Name: "uports4", KeyType: nftables.TypeInetService}
	if cfg.Port6 != 0 {
		r.uports6 = &nftables.Set{Table: r.table, Name: "uports6", KeyType: nftables.TypeInetService}
	}
	for fam, set := range map[byte]*nftables.Set{unix.NFPROTO_IPV4: r.uports4, unix.NFPROTO_IPV6: r.uports6} {
		if set == nil {
			continue
		}
		if err := conn.AddSet(set, nil); err != nil {
			return nil, fmt.Errorf("capture: install: set: %w", err)
		}
		conn.AddRule(&nftables.Rule{Table: r.table, Chain: in, Exprs: dropDirectUDP(fam, set)})
	}
	prio := nftables.ChainPriority(Priority)
	for _, hook := range []*nftables.ChainHook{nftables.ChainHookOutput, nftables.ChainHookPrerouting} {
		name := "output"
		if hook == nftables.ChainHookPrerouting {
			name = "prerouting"
		}
		ch := conn.AddChain(&nftables.Chain{Name: name, Table: r.table, Type: nftables.ChainTypeNAT,
			Hooknum: hook, Priority: &prio})
		conn.AddRule(&nftables.Rule{Table: r.table, Chain: ch, Exprs: redirect(unix.NFPROTO_IPV4, r.set4, cfg.Port)})
		if r.set6 != nil {
			conn.AddRule(&nftables.Rule{Table: r.table, Chain: ch, Exprs: redirect(unix.NFPROTO_IPV6, r.set6, cfg.Port6)})
		}
		conn.AddRule(&nftables.Rule{Table: r.table, Chain: ch, Exprs: redirectUDP(unix.NFPROTO_IPV4, r.udp4)})
		if r.udp6 != nil {
			conn.AddRule(&nftables.Rule{Table: r.table, Chain: ch, Exprs: redirectUDP(unix.NFPROTO_IPV6, r.udp6)})
		}
	}
	if err := conn.Flush(); err != nil {
		return nil, classify(fmt.Errorf("capture: install table inet %s: %w", TableName, err))
	}
	return r, nil
}

// redirect is, for IPv4: meta nfproto ipv4 meta l4proto tcp
// ip daddr . tcp dport @dst4 redirect to :port; for IPv6 the same with
// ip6 daddr and @dst6.
func redirect(family byte, set *nftables.Set, port uint16) []expr.Any {
	return append(matchDst(family, unix.IPPROTO_TCP),
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
		&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
		&expr.Redir{RegisterProtoMin: 1})
}

// redirectUDP is, for IPv4: meta nfproto ipv4 meta l4proto udp
// redirect to : ip daddr . udp dport map @udp4 — each captured UDP
// ClusterIP:port has a port of its own at the agent, since a redirected
// datagram's original destination cannot be read back from a UDP socket.
func redirectUDP(family byte, m *nftables.Set) []expr.Any {
	return append(matchDst(family, unix.IPPROTO_UDP),
		&expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: m.Name, SetID: m.ID},
		&expr.Redir{RegisterProtoMin: 1})
}

// dropDirectUDP is, for IPv4: meta nfproto ipv4 meta l4proto udp
// udp dport @uports4 ct status & dnat == 0 drop — a datagram to one of the
// agent's capture UDP ports that was not redirected there (IPS_DST_NAT:
// set by redirect).
func dropDirectUDP(family byte, ports *nftables.Set) []expr.Any {
	const ipsDstNAT = 1 << 5 // enum ip_conntrack_status, IPS_DST_NAT_BIT 5
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{family}},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: 1, SetName: ports.Name, SetID: ports.ID},
		&expr.Ct{Register: 1, Key: expr.CtKeySTATUS},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(ipsDstNAT), Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0, 0, 0, 0}},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}
}

// matchDst matches family and l4proto and loads the destination address
// and port as the key of a set or map of address . port. The
// concatenation's fields sit in consecutive 32-bit registers from
// NFT_REG32_00 (8, register 1's first word): an IPv4 address in 8 and the
// port in 9; an IPv6 address in 8 to 11 and the port in 12.
func matchDst(family, l4proto byte) []expr.Any {
	daddr := &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4}
	portReg := uint32(9)
	if family == unix.NFPROTO_IPV6 {
		daddr = &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 24, Len: 16}
		portReg = 12
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{family}},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{l4proto}},
		daddr,
		&expr.Payload{DestRegister: portReg, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
	}
}

// SyncUDP makes dests the captured UDP destinations, each redirected to
// its port at the agent, replacing the maps' elements in one transaction.
// Without Config.Port6, IPv6 destinations are skipped and returned.
func (r *Rules) SyncUDP(dests map[netip.AddrPort]uint16) (skipped []netip.AddrPort, err error) {
	keep := map[netip.AddrPort]uint16{}
	for d, port := range dests {
		d = netip.AddrPortFrom(d.Addr().Unmap(), d.Port())
		if d.Addr().Is6() && r.udp6 == nil {
			skipped = append(skipped, d)
			continue
		}
		keep[d] = port
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.gone {
		return skipped, errors.New("capture: sync: rules removed")
	}
	if maps.Equal(keep, r.udpDests) {
		return skipped, nil
	}
	var e4, e6, p4, p6 []nftables.SetElement
	ports := map[netip.AddrPort]bool{} // family (the zero address of it) and port
	for d, port := range keep {
		val := binaryutil.BigEndian.PutUint16(port)
		fam := netip.AddrPortFrom(netip.IPv4Unspecified(), port)
		if d.Addr().Is4() {
			e4 = append(e4, nftables.SetElement{Key: key4(d), Val: val})
		} else {
			e6 = append(e6, nftables.SetElement{Key: key6(d), Val: val})
			fam = netip.AddrPortFrom(netip.IPv6Unspecified(), port)
		}
		if !ports[fam] {
			ports[fam] = true
			if d.Addr().Is4() {
				p4 = append(p4, nftables.SetElement{Key: val})
			} else {
				p6 = append(p6, nftables.SetElement{Key: val})
			}
		}
	}
	if err := r.replaceLocked(setElems{r.udp4, e4}, setElems{r.udp6, e6}, setElems{r.uports4, p4}, setElems{r.uports6, p6}); err != nil {
		return skipped, fmt.Errorf("capture: sync %d udp destinations: %w", len(keep), err)
	}
	r.udpDests = keep
	return skipped, nil
}

// Sync makes dests the captured destinations, replacing the sets'
// elements in one transaction. Without Config.Port6, IPv6 destinations are
// skipped and returned.
func (r *Rules) Sync(dests []netip.AddrPort) (skipped []netip.AddrPort, err error) {
	var keep []netip.AddrPort
	for _, d := range dests {
		d = netip.AddrPortFrom(d.Addr().Unmap(), d.Port())
		if d.Addr().Is6() && r.set6 == nil {
			skipped = append(skipped, d)
			continue
		}
		keep = append(keep, d)
	}
	slices.SortFunc(keep, netip.AddrPort.Compare)
	keep = slices.Compact(keep)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.gone {
		return skipped, errors.New("capture: sync: rules removed")
	}
	if slices.Equal(keep, r.dests) {
		return skipped, nil
	}
	var e4, e6 []nftables.SetElement
	for _, d := range keep {
		if d.Addr().Is4() {
			e4 = append(e4, nftables.SetElement{Key: key4(d)})
		} else {
			e6 = append(e6, nftables.SetElement{Key: key6(d)})
		}
	}
	if err := r.replaceLocked(setElems{r.set4, e4}, setElems{r.set6, e6}); err != nil {
		return skipped, fmt.Errorf("capture: sync %d destinations: %w", len(keep), err)
	}
	r.dests = keep
	return skipped, nil
}

// setElems is a set (nil: not installed) and the elements it is to hold.
type setElems struct {
	set   *nftables.Set
	elems []nftables.SetElement
}

// replaceLocked makes each set hold its elements, in one transaction.
// r.mu is held.
func (r *Rules) replaceLocked(sets ...setElems) error {
	for _, s := range sets {
		if s.set == nil {
			continue
		}
		r.conn.FlushSet(s.set)
		if len(s.elems) > 0 {
			if err := r.conn.SetAddElements(s.set, s.elems); err != nil {
				return err
			}
		}
	}
	return r.conn.Flush()
}

// key4 is a dst4 element: the address, then the port padded to 4 bytes.
func key4(d netip.AddrPort) []byte {
	a := d.Addr().As4()
	return []byte{a[0], a[1], a[2], a[3], byte(d.Port() >> 8), byte(d.Port()), 0, 0}
}

// key6 is a dst6 element: the address, then the port padded to 4 bytes.
func key6(d netip.AddrPort) []byte {
	a := d.Addr().As16()
	return append(a[:], byte(d.Port()>>8), byte(d.Port()), 0, 0)
}

// Remove deletes the agent's table. It is idempotent; the agent calls it
// on exit.
func (r *Rules) Remove() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.gone {
		return nil
	}
	r.gone = true
	r.conn.DelTable(r.table)
	err := r.conn.Flush()
	if cerr := r.conn.CloseLasting(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("capture: remove table inet %s: %w", TableName, err)
	}
	return nil
}

// Destinations returns the destinations the kernel's set holds now, read
// back from it (status and tests).
func Destinations(netnsFd int) ([]netip.AddrPort, bool, error) {
	conn, err := dial(netnsFd)
	if err != nil {
		return nil, false, err
	}
	defer conn.CloseLasting()
	t, err := conn.ListTableOfFamily(TableName, nftables.TableFamilyINet)
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENOENT) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, classify(fmt.Errorf("capture: list table: %w", err))
	}
	var out []netip.AddrPort
	for _, name := range []string{"dst4", "dst6"} {
		set, err := conn.GetSetByName(t, name)
		if err != nil {
			if name == "dst6" {
				continue // installed without Port6
			}
			return nil, true, fmt.Errorf("capture: set %s: %w", name, err)
		}
		elems, err := conn.GetSetElements(set)
		if err != nil {
			return nil, true, fmt.Errorf("capture: set %s elements: %w", name, err)
		}
		for _, e := range elems {
			switch {
			case name == "dst4" && len(e.Key) >= 6:
				out = append(out, netip.AddrPortFrom(netip.AddrFrom4([4]byte(e.Key[:4])), uint16(e.Key[4])<<8|uint16(e.Key[5])))
			case name == "dst6" && len(e.Key) >= 18:
				out = append(out, netip.AddrPortFrom(netip.AddrFrom16([16]byte(e.Key[:16])), uint16(e.Key[16])<<8|uint16(e.Key[17])))
			}
		}
	}
	slices.SortFunc(out, netip.AddrPort.Compare)
	return out, true, nil
}

func dial(netnsFd int) (*nftables.Conn, error) {
	var opts []nftables.ConnOption
	if netnsFd != 0 {
		opts = append(opts, nftables.WithNetNSFd(netnsFd))
	}
	opts = append(opts, nftables.AsLasting())
	conn, err := nftables.New(opts...)
	if err != nil {
		return nil, classify(fmt.Errorf("capture: netlink: %w", err))
	}
	return conn, nil
}

// classify marks the errors after which the agent falls back to virtual
// IPs: no permission, or no nftables in the kernel.
func classify(err error) error {
	for _, e := range []error{unix.EPERM, unix.EACCES, unix.EPROTONOSUPPORT, unix.ENOENT, unix.EOPNOTSUPP, unix.EAFNOSUPPORT} {
		if errors.Is(err, e) {
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
	}
	return err
}
