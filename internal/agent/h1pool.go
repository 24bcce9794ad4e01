package agent

import (
	"context"
	"fmt"
	"net"
	"net/http"

	"github.com/fogmesh/fogmesh/internal/httpproxy"
	"github.com/fogmesh/fogmesh/internal/transport"
)

// The fast path's upstream pools (httpproxy.Pool), one per endpoint port,
// named by poolKey.

// upstream returns the round tripper for one attempt: the fast path's pool
// for HTTP/1.1 endpoints of requests the fast path read, else the
// endpoint's http.Transport.
func (lt *lbTransport) upstream(sv *serviceView, ev *endpointView, t listenTarget) http.RoundTripper {
	if lt.h1 && t.proto == "http" {
		return lt.l7.h1.poolFor(sv, ev, t.port)
	}
	return lt.l7.transportFor(sv, ev, t.port, t.proto)
}

type h1PoolCacheKey struct {
	ev   *endpointView
	port string
}

// h1PoolEntry is the pool of endpoint view ev's port for destination sv,
// kept with ev (epHandles) for the first sv and port that asked, so that
// most requests find it without a sync.Map lookup (about 40 ns a request);
// forget drops it with the pool.
type h1PoolEntry struct {
	sv   *serviceView
	port string
	p    *httpproxy.Pool
}

// poolFor returns the pool of one endpoint port, cached per view like
// transportFor.
func (hp *h1Path) poolFor(sv *serviceView, ev *endpointView, port string) *httpproxy.Pool {
	if e := ev.h1pool.Load(); e != nil && e.sv == sv && e.port == port {
		return e.p
	}
	p := hp.poolForSlow(sv, ev, port)
	if ev.h1pool.Load() == nil { // the first asked keeps it: alternating ones would make an entry per request
		ev.h1pool.CompareAndSwap(nil, &h1PoolEntry{sv, port, p})
	}
	return p
}

func (hp *h1Path) poolForSlow(sv *serviceView, ev *endpointView, port string) *httpproxy.Pool {
	ck := h1PoolCacheKey{ev, port}
	if p, ok := sv.transports.Load(ck); ok {
		return p.(*httpproxy.Pool)
	}
	key := poolKey(sv, ev, port, "")
	hp.mu.Lock()
	p := hp.pools[key]
	if p == nil {
		a := hp.s.a
		p = httpproxy.NewPool(httpproxy.PoolConfig{
			Dial:        func(ctx context.Context) (net.Conn, error) { return a.dialEndpoint(ctx, sv, ev, port) },
			DialError:   func(err error) error { return &dialError{err} },
			IdleTimeout: l7IdleTimeout(sv),
			MaxUses:     sv.svc.Spec.CircuitBreaker.MaxRequestsPerConnection,
			OnPanic:     func(v any) { a.panicked("sending a request body beside its answer", v) },
		})
		if hp.closed {
			p.Close(false)
		} else {
			hp.pools[key] = p
		}
	}
	hp.mu.Unlock()
	sv.transports.Store(ck, p)
	return p
}

// poolKey names everything dialing an endpoint's port depends on, so a
// moved endpoint or a changed connect or idle timeout or TCP keepalive gets
// a fresh pool. It
// is the one key of every upstream pool: the HTTP/1.1 fast path's (proto
// "") and the ReverseProxy transports' (proto http, http2 or grpc); pruning
// rebuilds the same keys from the view.
func poolKey(sv *serviceView, ev *endpointView, port, proto string) string {
	epPort, _ := ev.ep.Port(port)
	ka := keepAliveConfig(sv.svc.Spec.CircuitBreaker.TCPKeepalive) // the dial's
	return fmt.Sprintf("%s|%s|%s|%s|%s|%d|%d|%d|%d|%t,%d,%d,%d", ev.key, port, proto, ev.mesh, ev.ep.Spec.Address, epPort, sv.svc.Spec.Timeouts.Connect, l7IdleTimeout(sv),
		sv.svc.Spec.CircuitBreaker.MaxRequestsPerConnection, ka.Enable, ka.Idle, ka.Interval, ka.Count)
}

// forget drops pool p of one endpoint port, found closed by a request,
// from the view's cache and the pools, so the next attempt gets a fresh
// one (prune closes it with the rest if the view no longer has it).
func (hp *h1Path) forget(sv *serviceView, ev *endpointView, port string, p *httpproxy.Pool) {
	sv.transports.CompareAndDelete(h1PoolCacheKey{ev, port}, p)
	if e := ev.h1pool.Load(); e != nil && e.p == p {
		ev.h1pool.CompareAndSwap(e, nil)
	}
	key := poolKey(sv, ev, port, "")
	hp.mu.Lock()
	if hp.pools[key] == p {
		delete(hp.pools, key)
	}
	hp.mu.Unlock()
}

// prune closes the pools of endpoints no longer in the view.
func (hp *h1Path) prune(v *view) {
	live := map[string]bool{}
	v.eachDestination(func(sv *serviceView) {
		for _, ev := range sv.endpoints {
			for _, pt := range ev.ep.Spec.Ports {
				live[poolKey(sv, ev, pt.Name, "")] = true
			}
		}
	})
	hp.mu.Lock()
	var dead []*httpproxy.Pool
	for k, p := range hp.pools {
		if !live[k] {
			dead = append(dead, p)
			delete(hp.pools, k)
		}
	}
	hp.mu.Unlock()
	for _, p := range dead {
		p.Close(false)
	}
}

// ReleaseIdle drops what idle users hold, for a memory trim once the agent
// is idle (internal/memtrim's Release): the HTTP/1.1 upstream pools keep
// their idlePoolKeep most recently used idle connections and close the
// rest (each holds buffers here and, over the mesh, a relay on the far
// agent), and mesh streams shrink their receive buffers
// (transport.ShrinkIdleStreams). It returns how many pooled connections it
// closed.
func (a *Agent) ReleaseIdle() int {
	n := a.l7.h1.shrinkIdle(idlePoolKeep)
	transport.ShrinkIdleStreams()
	return n
}

// idlePoolKeep is how many idle connections each upstream pool keeps when
// the agent goes idle (ReleaseIdle): enough for requests that come one or
// two at a time, without the rest of a burst's connections.
const idlePoolKeep = 2

// shrinkIdle closes the idle connections of every pool but the keep most
// recently used of each, and returns how many it closed.
func (hp *h1Path) shrinkIdle(keep int) int {
	hp.mu.Lock()
	pools := make([]*httpproxy.Pool, 0, len(hp.pools))
	for _, p := range hp.pools {
		pools = append(pools, p)
	}
	hp.mu.Unlock()
	n := 0
	for _, p := range pools {
		n += p.ShrinkIdle(keep)
	}
	return n
}

// closeAll closes every pool and every connection, also those in use (a
// request waiting on one fails), so shutdown does not wait on endpoints.
func (hp *h1Path) closeAll() {
	hp.mu.Lock()
	hp.closed = true
	pools := hp.pools
	hp.pools = map[string]*httpproxy.Pool{}
	hp.mu.Unlock()
	for _, p := range pools {
		p.Close(true)
	}
}

// detachHeader: resp's body is read on in the background after its request
// (keepResponse gave up waiting for it), so its header stays its own: the
// fast path's client connection lends the next response another one
// (httpproxy.DetachResponseHeader).
func detachHeader(resp *http.Response) {
	if resp.Request != nil {
		httpproxy.DetachResponseHeader(resp.Request.Context())
	}
}
