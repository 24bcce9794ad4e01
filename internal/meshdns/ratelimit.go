package meshdns

import (
	"container/list"
	"math"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// maxForwardClients bounds the clients whose forwarding rate is tracked.
// Each costs about 250 bytes, so the state stays under about 1 MiB however
// many source addresses a spoofer sends from; a node has far fewer real
// clients (its workloads, or the one caching resolver in front of them).
const maxForwardClients = 4096

// clientLimits is a token bucket per client (clientAddr) for the
// queries the server forwards. It tracks at most max clients, the most
// recently used: a new client past the cap makes it forget the least
// recently used one. A client unused for idle (the time an empty bucket
// takes to fill again) is forgotten as well, which changes nothing: it
// would come back to a full bucket either way. A nil *clientLimits
// allows everything.
type clientLimits struct {
	rate  rate.Limit
	burst int
	max   int
	idle  time.Duration
	now   func() time.Time

	mu     sync.Mutex
	byAddr map[netip.Addr]*list.Element // of *clientBucket, in lru
	lru    list.List                    // front: most recently used
}

type clientBucket struct {
	addr netip.Addr
	last time.Time // when the client last asked
	lim  *rate.Limiter
}

// newClientLimits returns the buckets for perSecond queries per second and
// client, in bursts of twice as many, tracking at most max clients; nil
// (no limit) if perSecond is not positive.
func newClientLimits(perSecond, max int) *clientLimits {
	if perSecond <= 0 {
		return nil
	}
	return newClientLimitsAt(perSecond, 2*min(perSecond, math.MaxInt/2), max, time.Now)
}

func newClientLimitsAt(perSecond, burst, max int, now func() time.Time) *clientLimits {
	return &clientLimits{
		rate:   rate.Limit(perSecond),
		burst:  burst,
		max:    max,
		idle:   time.Duration(float64(burst) / float64(perSecond) * float64(time.Second)),
		now:    now,
		byAddr: make(map[netip.Addr]*list.Element),
	}
}

// allow takes a token from client's bucket and reports whether there was
// one.
func (l *clientLimits) allow(client netip.Addr) bool {
	if l == nil {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	for e := l.lru.Back(); e != nil && now.Sub(e.Value.(*clientBucket).last) >= l.idle; e = l.lru.Back() {
		l.forget(e)
	}
	e, ok := l.byAddr[client]
	if ok {
		l.lru.MoveToFront(e)
	} else {
		if l.lru.Len() >= l.max {
			l.forget(l.lru.Back())
		}
		e = l.lru.PushFront(&clientBucket{addr: client, lim: rate.NewLimiter(l.rate, l.burst)})
		l.byAddr[client] = e
	}
	b := e.Value.(*clientBucket)
	b.last = now
	return b.lim.AllowN(now, 1)
}

func (l *clientLimits) forget(e *list.Element) {
	delete(l.byAddr, l.lru.Remove(e).(*clientBucket).addr)
}

// len returns the number of clients tracked.
func (l *clientLimits) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lru.Len()
}

// tracked reports whether client has a bucket.
func (l *clientLimits) tracked(client netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.byAddr[client]
	return ok
}

// clientAddr is the client a query's sender counts as, the key of its
// limits: its IP address (IPv4-mapped as IPv4, without a zone); the zero
// Addr for an address that is neither UDP nor TCP. Not by an IPv6 /64, as
// the admin API's and handshakes' limits (clientip.Key) count their remote
// clients: the agent's DNS clients are its node's workloads, and the pods
// of a node share the node's /64, each with an address it cannot choose,
// so a /64 would make one noisy pod its neighbours' limit. A sender that
// can pick addresses (host network, CAP_NET_ADMIN) gets a fresh bucket per
// address (the tracker forgets its least recently used client when full):
// only the server's bound on forwards in flight in all holds it.
func clientAddr(a net.Addr) netip.Addr {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.UDPAddr:
		ap = a.AddrPort()
	case *net.TCPAddr:
		ap = a.AddrPort()
	}
	return ap.Addr().Unmap().WithZone("")
}

// forwardLimits are the limits on one transport's forwards per client.
type forwardLimits struct {
	rate     *clientLimits  // queries per second; nil: no limit
	inFlight clientInFlight // forwards in flight, at most maxForwards/8 (per transport: a client's quarter)
}

// clientInFlight counts each client's forwards in flight. A client is
// held only while it has one, so it holds at most maxForwards entries.
type clientInFlight struct {
	mu sync.Mutex
	n  map[netip.Addr]int
}

// acquire counts a forward of client unless it has max in flight.
func (c *clientInFlight) acquire(client netip.Addr, max int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n[client] >= max {
		return false
	}
	if c.n == nil {
		c.n = map[netip.Addr]int{}
	}
	c.n[client]++
	return true
}

func (c *clientInFlight) release(client netip.Addr) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n[client]--; c.n[client] <= 0 {
		delete(c.n, client)
	}
}
