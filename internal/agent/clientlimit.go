package agent

import (
	"net"
	"net/http"
	"sync"
	"sync/atomic"
)

// clientLimiter counts each client's requests in flight, from admission
// until the response body is done. Clients are keyed by source address
// (the identity of a local workload is its address).
//
// A fast-path connection keeps its client's place for as long as it is
// open (holdConn), so its requests count there without the limiter's lock
// and map (acquireAt); a place leaves the map once no request and no
// connection holds it: no entry is kept per client that ever came.
type clientLimiter struct {
	mu sync.Mutex
	n  map[string]*clientPlace // guarded by mu
}

// clientPlace is one client's count: requests in flight, and the
// fast-path connections that keep the place (holdConn).
type clientPlace struct {
	key      string
	inflight atomic.Int64
	conns    atomic.Int64
}

func clientKey(remote string) string {
	if host, _, err := net.SplitHostPort(remote); err == nil {
		return host
	}
	return remote
}

// placeLocked returns key's place, made if it has none.
func (l *clientLimiter) placeLocked(key string) *clientPlace {
	p := l.n[key]
	if p == nil {
		if l.n == nil {
			l.n = map[string]*clientPlace{}
		}
		p = &clientPlace{key: key}
		l.n[key] = p
	}
	return p
}

// take counts one more request at p unless that makes more than limit.
// A refusal leaves the count as it was: an add undone after it would be
// read meanwhile by another admission, refused with a place free (the
// limiter's lock kept the count exact before a connection held places).
func (p *clientPlace) take(limit int) bool {
	for {
		n := p.inflight.Load()
		if n >= int64(limit) {
			return false
		}
		if p.inflight.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// acquire takes one of limit places for the client at remote (an
// "ip:port") into h; false when the client is at its limit. limit <= 0:
// no limit.
func (l *clientLimiter) acquire(remote string, limit int, h *reqHold) bool {
	if limit <= 0 {
		return true
	}
	l.mu.Lock()
	p := l.placeLocked(clientKey(remote))
	ok := p.take(limit)
	if !ok {
		l.dropIdleLocked(p)
	}
	l.mu.Unlock()
	if ok {
		h.clients, h.client = l, p
	}
	return ok
}

// acquireAt is acquire for a client whose place a connection holds (p,
// from holdConn; nil: no limit).
func (l *clientLimiter) acquireAt(p *clientPlace, limit int, h *reqHold) bool {
	if p == nil || limit <= 0 {
		return true
	}
	if !p.take(limit) {
		return false
	}
	h.clients, h.client = l, p
	return true
}

func (l *clientLimiter) release(p *clientPlace) {
	if p.inflight.Add(-1) == 0 && p.conns.Load() == 0 {
		l.drop(p)
	}
}

// holdConn keeps the place of the client at remote for one of its
// connections until dropConn; nil when limit <= 0 (no limit).
func (l *clientLimiter) holdConn(remote string, limit int) *clientPlace {
	if limit <= 0 {
		return nil
	}
	l.mu.Lock()
	p := l.placeLocked(clientKey(remote))
	p.conns.Add(1)
	l.mu.Unlock()
	return p
}

func (l *clientLimiter) dropConn(p *clientPlace) {
	if p != nil && p.conns.Add(-1) == 0 && p.inflight.Load() == 0 {
		l.drop(p)
	}
}

// drop removes p from the map if nothing holds it any more. The last
// request's release and the last connection's dropConn may both call it:
// each counts down before it loads the other count, so at least one of
// them sees both at zero; the check under the lock settles the rest.
func (l *clientLimiter) drop(p *clientPlace) {
	l.mu.Lock()
	l.dropIdleLocked(p)
	l.mu.Unlock()
}

func (l *clientLimiter) dropIdleLocked(p *clientPlace) {
	if p.inflight.Load() == 0 && p.conns.Load() == 0 && l.n[p.key] == p {
		delete(l.n, p.key)
	}
}

// clientPlaceKey is the context key of an HTTP/2 connection's place
// (l7.serveH2): its streams' requests carry it in their context.
type clientPlaceKey struct{}

// acquireFor is acquire for req: at place if its connection keeps one
// (the fast path's h1ClientConn hands it over: lbTransport.roundTripAt;
// an HTTP/2 connection's is in the request's context), else by its
// source address. Only a request of an HTTP/2 client (ProtoMajor 2,
// which ReverseProxy and forwardH2 keep) can have a place in its
// context: an HTTP/1.x request of the net/http server is not searched.
func (l *clientLimiter) acquireFor(req *http.Request, place *clientPlace, limit int, h *reqHold) bool {
	if place == nil && req.ProtoMajor == 2 && limit > 0 {
		place, _ = req.Context().Value(clientPlaceKey{}).(*clientPlace)
	}
	if place != nil {
		return l.acquireAt(place, limit, h)
	}
	return l.acquire(req.RemoteAddr, limit, h)
}
