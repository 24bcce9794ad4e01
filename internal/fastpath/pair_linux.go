package fastpath

// A linked pair: its maps' entries, leaving the kernel path, and the agent
// sockets' writes that publish what was forwarded.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"

	"github.com/fogmesh/fogmesh/internal/proxy"
)

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
