package fastpath

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
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

// pair is one linked client/endpoint pair: the client's socket (c), the
// agent's accepted socket (a1), the agent's socket to the endpoint (a2) and
// the endpoint's (e).
type pair struct {
	f                  *FastPath
	c, a1, a2, e       tuple
	cookieC, cookieE   uint64 // the far sockets' cookies
	cookieA1, cookieA2 uint64 // the agent's sockets' cookies

	// The maps are keyed by tuple, and a tuple outlives its socket: a
	// client that resets its connection can connect again from the same
	// port while the old pair's Relay is still ending, and its new pair
	// then uses the same keys. So the pair deletes only entries that still
	// name its own sockets (by cookie); the new pair's are left alone.

	gaveUp     atomic.Bool // set before giveUp takes the pair out of the maps
	giveUpOnce sync.Once
}

// link inserts the agent's sockets and links the far ones to them.
func (f *FastPath) link(client, up *net.TCPConn, sent int64) (*pair, bool) {
	a1, ok1 := tupleOf(client)
	a2, ok2 := tupleOf(up)
	if !ok1 || !ok2 {
		return nil, false
	}
	p := &pair{f: f, a1: a1, c: a1.reverse(), a2: a2, e: a2.reverse()}
	var cookie [8]byte
	if f.sockhash.Lookup(p.c[:], cookie[:]) != nil || f.sockhash.Lookup(p.e[:], cookie[:]) != nil {
		return nil, false // a far socket is not tracked
	}
	var cc, ce [countSize]byte
	if f.counts.Lookup(p.c[:], cc[:]) != nil || f.counts.Lookup(p.e[:], ce[:]) != nil {
		return nil, false
	}
	var ack [16]byte
	if f.acks.Lookup(p.a1[:], ack[:]) != nil || f.acks.Lookup(p.a2[:], ack[:]) != nil {
		return nil, false // the agent's sockets are not watched: the queue bound cannot hold
	}
	if synData(client) || setSndBuf(client) != nil || setSndBuf(up) != nil {
		return nil, false
	}
	p.cookieC, p.cookieE = binary.NativeEndian.Uint64(cc[16:]), binary.NativeEndian.Uint64(ce[16:])
	if putSocket(f.sockhash, p.a1, client) != nil || putSocket(f.sockhash, p.a2, up) != nil {
		f.sockhash.Delete(p.a1[:])
		return nil, false
	}
	var k1, k2 [8]byte // the agent's sockets' cookies, as the sockhash gives them
	if f.sockhash.Lookup(p.a1[:], k1[:]) != nil || f.sockhash.Lookup(p.a2[:], k2[:]) != nil {
		f.sockhash.Delete(p.a1[:])
		f.sockhash.Delete(p.a2[:])
		return nil, false
	}
	p.cookieA1, p.cookieA2 = binary.NativeEndian.Uint64(k1[:]), binary.NativeEndian.Uint64(k2[:])
	if f.links.Put(p.c[:], linkValue(p.a2, uint64(sent), p.cookieC)) != nil || f.links.Put(p.e[:], linkValue(p.a1, 0, p.cookieE)) != nil {
		p.unlink()
		return nil, false
	}
	return p, true
}

// unlink ends the pair in the kernel: no send is redirected after it.
func (p *pair) unlink() {
	p.deleteLink(p.c, p.cookieC)
	p.deleteLink(p.e, p.cookieE)
	for _, s := range []struct {
		k      tuple
		cookie uint64
	}{{p.a1, p.cookieA1}, {p.a2, p.cookieA2}} {
		// The agent's socket leaves the sockhash when it closes; a socket
		// there now under its tuple is a new pair's, as are its acks.
		var v [8]byte
		if err := p.f.sockhash.Lookup(s.k[:], v[:]); err == nil && binary.NativeEndian.Uint64(v[:]) != s.cookie {
			continue
		}
		p.f.sockhash.Delete(s.k[:])
		p.f.acks.Delete(s.k[:]) // the entries would otherwise wait for the LRU
	}
}

// ownedBy looks k up in m and reports whether the value's cookie at off
// (the socket the entry was made for) is cookie; it returns the value.
func ownedBy(m *ebpf.Map, k tuple, off int, cookie uint64) ([]byte, bool) {
	v := make([]byte, m.ValueSize())
	if m.Lookup(k[:], v) != nil {
		return nil, false
	}
	return v, binary.NativeEndian.Uint64(v[off:]) == cookie
}

// deleteLink deletes the link of the far socket k if it is still the one
// made for the socket with cookie (a lookup then a delete: a new pair
// linked in between would lose its link, which only keeps it on the
// agent's path).
func (p *pair) deleteLink(k tuple, cookie uint64) {
	if _, ok := ownedBy(p.f.links, k, tupleSize+8, cookie); ok {
		p.f.links.Delete(k[:])
	}
}

// redirected is the bytes the kernel sent past the agent from the client
// and from the endpoint, and forgets the far sockets' counters.
func (p *pair) redirected() (fromClient, fromEndpoint int64) {
	var n [2]int64
	for i, k := range []tuple{p.c, p.e} {
		cookie := []uint64{p.cookieC, p.cookieE}[i]
		if v, ok := ownedBy(p.f.counts, k, 16, cookie); ok {
			n[i] = int64(binary.NativeEndian.Uint64(v[8:]))
			p.f.counts.Delete(k[:])
		}
	}
	return n[0], n[1]
}

// Leaving the kernel path. A sender that never pauses and outruns its
// reader fills the agent's socket past maxQueued; its bytes then go the
// agent's way, and the kernel can take them again only at a send that
// finds every earlier byte forwarded, which such a sender allows only when
// it pauses. Until then the agent relays them itself, through user space,
// with a map update per write and the programs still running on every
// send and ACK: slower than its plain splice relay (bench/fastpath.sh,
// with a busy core: 0.30x direct against 0.45x). So each direction keeps
// score in windows of at least giveUpTime, looking at the kernel's count
// every eighth of giveUpAfter the agent forwards: a window in which the agent
// forwarded giveUpAfter bytes or more and the kernel under a fifth as
// many gives up the pair (giveUp): the kernel redirects none of its bytes
// and both directions splice from then on. Short spells (a
// reader that fell behind for a moment: the bulk runs of a quiet machine
// have them) keep the kernel path; a reader that stays behind, with the
// kernel taking a burst now and then while the sender pauses, does not.
const (
	giveUpAfter = 64 << 20
	giveUpTime  = 3 * time.Second
)

// giveUp takes the pair out of the kernel path for good. Sends already
// redirected went out in order (the program redirects only when the agent
// has forwarded every earlier byte); once the links are gone every later
// send goes the agent's way, and once the far sockets leave the sockhash
// the programs no longer run on their sends. The agent's own sockets stay
// in the sockhash until Relay ends: a send whose verdict read the link
// just before it was deleted still finds its target there (the kernel
// looks the target's state up after the verdict; missing, the bytes would
// be lost or the sender get EPIPE). The counters stay too, for Result.
func (p *pair) giveUp() {
	p.giveUpOnce.Do(func() {
		p.gaveUp.Store(true)
		p.deleteLink(p.c, p.cookieC)
		p.deleteLink(p.e, p.cookieE)
		if _, ok := ownedBy(p.f.sockhash, p.c, 0, p.cookieC); ok {
			p.f.sockhash.Delete(p.c[:])
		}
		if _, ok := ownedBy(p.f.sockhash, p.e, 0, p.cookieE); ok {
			p.f.sockhash.Delete(p.e[:])
		}
	})
}

// kernelSent is the bytes the kernel has redirected from the far socket
// with key k so far; ok is false when its counter is gone (the map is an
// LRU).
func (p *pair) kernelSent(k tuple, cookie uint64) (n int64, ok bool) {
	var v [countSize]byte
	if p.f.counts.Lookup(k[:], v[:]) != nil || binary.NativeEndian.Uint64(v[16:]) != cookie {
		return 0, false
	}
	return int64(binary.NativeEndian.Uint64(v[8:])), true
}

// publishConn is an agent socket of a linked pair. Its writes go through
// Write: after each one it publishes how many of the far socket key's
// bytes the agent has forwarded, which is what lets the kernel take over
// once they are all through. Once the pair gave up the kernel path,
// ReadFrom splices instead.
type publishConn struct {
	net.Conn
	p         *pair
	key, peer tuple  // the far socket whose bytes this conn writes; the socket they go out of
	cookie    uint64 // the far socket's cookie
	n         int64
	val       [linkSize]byte // the link value Write publishes

	sinceCheck int64     // bytes written since the last look at the kernel's count
	winAt      time.Time // the score's window: when it began (zero: at the next look),
	winN, winK int64     // and n and the kernel's count then
}

func (c *publishConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if n <= 0 || c.p.gaveUp.Load() {
		return n, err
	}
	c.n += int64(n)
	putLink(c.val[:], c.peer, uint64(c.n), c.cookie) // no allocation per write
	// A link gone (a stale pair with the same tuples ended and took it)
	// only keeps this direction on the agent's path: not an error.
	if perr := c.p.f.links.Update(c.key[:], c.val[:], ebpf.UpdateExist); perr != nil && !errors.Is(perr, ebpf.ErrKeyNotExist) && err == nil && !c.p.gaveUp.Load() {
		err = fmt.Errorf("fastpath: publish forwarded bytes: %w", perr)
	}
	if c.sinceCheck += int64(n); c.sinceCheck >= c.p.f.giveUpAfter/8 {
		c.sinceCheck = 0
		now := time.Now()
		k, ok := c.p.kernelSent(c.key, c.cookie)
		switch {
		case !ok:
			// No counter to judge by: keep the kernel path.
		case c.winAt.IsZero():
			c.winAt, c.winN, c.winK = now, c.n, k
		case now.Sub(c.winAt) >= c.p.f.giveUpTime:
			if agent := c.n - c.winN; agent >= c.p.f.giveUpAfter && 5*(k-c.winK) < agent {
				c.p.giveUp()
			}
			c.winAt, c.winN, c.winK = now, c.n, k
		}
	}
	return n, err
}

// ReadFrom copies r (the other agent socket of the pair, or its
// publishConn) here: through Write while the pair is linked, then, once it
// gave up the kernel path, with splice(2) between the two sockets.
func (c *publishConn) ReadFrom(r io.Reader) (int64, error) {
	// Large writes: each costs a map update besides, and a sender that
	// never pauses gives the kernel path back only when the agent has
	// caught up with it, which fewer, larger writes do more often
	// (BenchmarkOneWay: the kernel's share 0.05–5 % with 32 KiB, 26–60 %
	// with 256 KiB).
	n, stopped, err := proxy.CopyWhileBulk(c, r, func() bool { return !c.p.gaveUp.Load() })
	if !stopped {
		return n, err
	}
	if pc, ok := r.(*publishConn); ok {
		r = pc.Conn
	}
	m, err := c.Conn.(*net.TCPConn).ReadFrom(r)
	return n + m, err
}

// Close ends the link whose bytes leave from this socket before it closes,
// so the far side's later sends go to the agent's path (and meet the
// closed connection there) instead of a socket leaving the sockhash.
func (c *publishConn) Close() error {
	c.p.deleteLink(c.key, c.cookie)
	return c.Conn.Close()
}

// CloseWrite half-closes the underlying TCP connection.
func (c *publishConn) CloseWrite() error { return c.Conn.(*net.TCPConn).CloseWrite() }
