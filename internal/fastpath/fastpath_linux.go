package fastpath

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/fogmesh/fogmesh/internal/proxy"
)

// Map sizes. A full sockhash or link map only means new pairs stay on the
// userspace path.
const (
	maxPorts   = 4096
	maxSockets = 65536
)

// FastPath is the loaded and attached BPF side. Its methods are safe for
// concurrent use.
type FastPath struct {
	ports, sockhash, links, counts, acks *ebpf.Map
	sockOps, skMsg                       *ebpf.Program
	cgLink                               link.Link
	cgroup                               string
	mounted                              bool // cgroup was mounted by Open
	// When a pair leaves the kernel path (giveUpAfter, giveUpTime; tests
	// shrink them). Set before the first Relay.
	giveUpAfter int64
	giveUpTime  time.Duration

	mu     sync.Mutex // guards the following
	closed bool
	eps    map[netip.AddrPort]int // registered endpoints: pairs using each
}

// Open loads the programs and attaches them: sock_ops to the cgroup v2
// hierarchy at cgroupDir ("" finds the mounted one; with none mounted, one
// is mounted at mountDir), sk_msg to the sockhash. It needs root (or
// CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON and CAP_SYS_ADMIN), a kernel with
// sockmap (5.15 or later) and the kernel's BTF (/sys/kernel/btf/vmlinux:
// the sk_msg program reads the sending socket's struct tcp_sock). Close
// detaches everything.
func Open(cgroupDir, mountDir string) (*FastPath, error) {
	mounted := false
	if cgroupDir == "" {
		var err error
		if cgroupDir, mounted, err = cgroup2Dir(mountDir); err != nil {
			return nil, err
		}
	}
	_ = rlimit.RemoveMemlock() // kernels before 5.11 count BPF memory there
	f := &FastPath{cgroup: cgroupDir, mounted: mounted, eps: map[netip.AddrPort]int{},
		giveUpAfter: giveUpAfter, giveUpTime: giveUpTime}
	ok := false
	defer func() {
		if !ok {
			f.Close()
		}
	}()
	var err error
	if f.ports, err = newMap("fm_ports", ebpf.Hash, 8, 4, maxPorts); err != nil {
		return nil, err
	}
	if f.sockhash, err = newMap("fm_socks", ebpf.SockHash, tupleSize, 8, maxSockets); err != nil {
		return nil, err
	}
	// Not preallocated: the agent replaces a link's value on every write,
	// and a preallocated map recycles the replaced element at once, under
	// a program still reading it (its forwarded count from one value, its
	// peer from another). Freed after an RCU grace period, it stays whole.
	if f.links, err = newMap("fm_links", ebpf.Hash, tupleSize, linkSize, maxSockets, unix.BPF_F_NO_PREALLOC); err != nil {
		return nil, err
	}
	if f.counts, err = newMap("fm_counts", ebpf.LRUHash, tupleSize, countSize, maxSockets); err != nil {
		return nil, err
	}
	if f.acks, err = newMap("fm_acks", ebpf.LRUHash, tupleSize, 16, maxSockets); err != nil {
		return nil, err
	}
	tcpSock, err := loadTCPSockOffsets()
	if err != nil {
		return nil, err
	}
	m := progMaps{ports: f.ports.FD(), sockhash: f.sockhash.FD(), links: f.links.FD(), counts: f.counts.FD(), acks: f.acks.FD(), tcpSock: tcpSock}
	if f.skMsg, err = ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "fm_sk_msg", Type: ebpf.SkMsg, License: progLicense,
		Instructions: skMsgProgram(m),
	}); err != nil {
		return nil, fmt.Errorf("fastpath: load sk_msg program: %w", err)
	}
	netns, err := netnsCookie()
	if err != nil {
		return nil, err
	}
	if f.sockOps, err = ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "fm_sock_ops", Type: ebpf.SockOps, License: progLicense,
		Instructions: sockOpsProgram(m, netns),
	}); err != nil {
		return nil, fmt.Errorf("fastpath: load sock_ops program: %w", err)
	}
	if err := link.RawAttachProgram(link.RawAttachProgramOptions{
		Target: f.sockhash.FD(), Program: f.skMsg, Attach: ebpf.AttachSkMsgVerdict,
	}); err != nil {
		return nil, fmt.Errorf("fastpath: attach sk_msg to the sockhash: %w", err)
	}
	if f.cgLink, err = link.AttachCgroup(link.CgroupOptions{
		Path: cgroupDir, Attach: ebpf.AttachCGroupSockOps, Program: f.sockOps,
	}); err != nil {
		return nil, fmt.Errorf("fastpath: attach sock_ops to cgroup %s: %w", cgroupDir, err)
	}
	ok = true
	return f, nil
}

func newMap(name string, typ ebpf.MapType, key, value, max uint32, flags ...uint32) (*ebpf.Map, error) {
	spec := &ebpf.MapSpec{Name: name, Type: typ, KeySize: key, ValueSize: value, MaxEntries: max}
	for _, f := range flags {
		spec.Flags |= f
	}
	m, err := ebpf.NewMap(spec)
	if err != nil {
		return nil, fmt.Errorf("fastpath: create map %s: %w", name, err)
	}
	return m, nil
}

// Cgroup is the cgroup v2 directory the sock_ops program is attached to.
func (f *FastPath) Cgroup() string { return f.cgroup }

// Close detaches the programs and frees the maps (and unmounts the cgroup
// v2 hierarchy Open mounted); sockets in the sockhash go back to the
// kernel's plain TCP. Call it after the last Relay has returned: a Relay
// still running ends with an error. Close is idempotent.
func (f *FastPath) Close() error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil
	}
	f.closed = true
	f.mu.Unlock()
	if f.cgLink != nil {
		f.cgLink.Close()
	}
	if f.skMsg != nil && f.sockhash != nil {
		_ = link.RawDetachProgram(link.RawDetachProgramOptions{
			Target: f.sockhash.FD(), Program: f.skMsg, Attach: ebpf.AttachSkMsgVerdict,
		})
	}
	for _, c := range []interface{ Close() error }{f.sockOps, f.skMsg, f.ports, f.sockhash, f.links, f.counts, f.acks} {
		if c != nil && !isNilCloser(c) {
			c.Close()
		}
	}
	if f.mounted {
		_ = unix.Unmount(f.cgroup, unix.MNT_DETACH)
	}
	return nil
}

func isNilCloser(c interface{ Close() error }) bool {
	switch v := c.(type) {
	case *ebpf.Map:
		return v == nil
	case *ebpf.Program:
		return v == nil
	}
	return false
}

// AddListener makes clients' connections to ap candidates for the fast path
// (only connections opened after this call). IPv6 addresses are ignored.
func (f *FastPath) AddListener(ap netip.AddrPort) error {
	return f.setPort(ap, kindListener)
}

// RemoveListener undoes AddListener.
func (f *FastPath) RemoveListener(ap netip.AddrPort) {
	if k, ok := portKey(ap); ok {
		_ = f.ports.Delete(k[:])
	}
}

func (f *FastPath) setPort(ap netip.AddrPort, kind uint32) error {
	k, ok := portKey(ap)
	if !ok {
		return nil
	}
	var v [4]byte
	binary.NativeEndian.PutUint32(v[:], kind)
	if err := f.ports.Put(k[:], v[:]); err != nil {
		return fmt.Errorf("fastpath: register %s: %w", ap, err)
	}
	return nil
}

// PrepareEndpoint registers a local endpoint before the agent dials it, so
// the endpoint's end of that connection is tracked. Call done when the
// connection is over (the address stays registered while any pair uses it).
func (f *FastPath) PrepareEndpoint(ap netip.AddrPort) (done func(), err error) {
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	if !ap.Addr().Is4() {
		return func() {}, nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.eps[ap] == 0 {
		if err := f.setPort(ap, kindEndpoint); err != nil {
			return nil, err
		}
	}
	f.eps[ap]++
	return func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.eps[ap]--; f.eps[ap] == 0 {
			delete(f.eps, ap)
			if k, ok := portKey(ap); ok {
				_ = f.ports.Delete(k[:])
			}
		}
	}, nil
}

// Result is what Relay did.
type Result struct {
	ClientToUp, UpToClient             int64 // bytes relayed through the agent
	Kernel                             bool  // the pair was linked in the kernel
	KernelClientToUp, KernelUpToClient int64 // bytes the kernel sent past the agent
	// GaveUp: the pair left the kernel path while open, the agent having
	// forwarded most of one side's bytes for giveUpTime (a sender that
	// never pauses, faster than its reader), and the agent spliced the
	// rest.
	GaveUp bool
}

// Relay relays client (accepted from a local client on a listener given to
// AddListener) and up (dialed to an endpoint given to PrepareEndpoint) as
// proxy.RelayIdleTCP does, and links them in the kernel: once the agent has
// forwarded every byte a side sent, that side's next sends leave from the
// agent's socket toward the other side directly, never waking the agent.
// sent is the number of the client's bytes already written to up (a
// replayed prefix). When either far socket is not tracked (a client in
// another network namespace or cgroup hierarchy, a remote endpoint, a
// connection opened before the fast path), the pair stays on the
// userspace path and Result.Kernel is false.
func (f *FastPath) Relay(ctx context.Context, client, up *net.TCPConn, sent int64, idle time.Duration) (Result, error) {
	p, ok := f.link(client, up, sent)
	if !ok {
		f.Untrack(client)
		f.Untrack(up)
		a, b, err := proxy.RelayIdle(ctx, client, up, idle)
		return Result{ClientToUp: a, UpToClient: b}, err
	}
	defer p.unlink()
	cw := &publishConn{Conn: client, p: p, key: p.e, peer: p.a1, cookie: p.cookieE}
	uw := &publishConn{Conn: up, p: p, key: p.c, peer: p.a2, cookie: p.cookieC, n: sent}
	a, b, err := proxy.RelayIdleTCP(ctx, cw, uw, client, up, idle)
	r := Result{ClientToUp: a, UpToClient: b, Kernel: true, GaveUp: p.gaveUp.Load()}
	r.KernelClientToUp, r.KernelUpToClient = p.redirected()
	return r, err
}

// Untrack takes the far end of the agent's connection c (a local client's
// or endpoint's socket) out of the sockhash, if sock_ops put it there: a
// connection the agent relays itself pays nothing for the fast path after
// this.
func (f *FastPath) Untrack(c *net.TCPConn) {
	if t, ok := tupleOf(c); ok {
		far := t.reverse()
		_ = f.sockhash.Delete(far[:])
		_ = f.counts.Delete(far[:])
	}
}
