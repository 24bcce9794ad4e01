package agent

// A scoped agent (Config.Scope) subscribes to the services its workloads
// use rather than to every service (docs/protocol.md, "Scoped
// subscriptions"). What it serves must still work, so its scope is
//
//   - the declared entries ("ns/name", "ns/*");
//   - the services of its own workloads (it serves them);
//   - what it learns on a miss: a DNS query for a mesh name it does not
//     hold, a route's mirror service, the namespace of a caller's claimed
//     identity it cannot vouch for (vouch.go).
//
// A miss adds the entry and asks for it on the open stream (a control
// plane with wire.FeatureScopeAdd answers with what enters the scope; an
// older one makes the agent reconnect with the wider scope). A DNS query
// waits for the answer up to scopeWait: a name the control plane answered
// for and the agent does not hold does not exist (NXDOMAIN); one it could
// not learn in time gets SERVFAIL, which resolvers retry, never a
// cached NXDOMAIN. The scope grows to at most maxScopeEntries; past that
// the agent subscribes to everything, as an unscoped agent does.

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/meshdns"
	"github.com/fogmesh/fogmesh/internal/syncproto"
	"github.com/fogmesh/fogmesh/internal/wire"
)

const (
	// scopeWait bounds how long a DNS query or a caller's identity check
	// waits for a service the agent asked for.
	scopeWait = 2 * time.Second
	// maxScopeEntries bounds a scoped agent's scope (declared, own and
	// learnt entries); one more makes it subscribe to everything.
	maxScopeEntries = 1000
	// maxScopeWaiters bounds the queries waiting for the control plane at
	// once; more are answered SERVFAIL at once.
	maxScopeWaiters = 256
)

// validScopeEntry tells whether e is "ns/name" or "ns/*" with DNS-label
// parts, as Config.Scope takes them.
func validScopeEntry(e string) bool {
	ns, name, ok := strings.Cut(e, "/")
	return ok && syncproto.ScopeEntry(e) && isScopeLabel(ns) && (name == "*" || isScopeLabel(name))
}

func isScopeLabel(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for _, r := range s {
		if (r < 'a' || r > 'z') && (r < '0' || r > '9') && r != '-' && r != '.' && r != '_' {
			return false
		}
	}
	return true
}

// scopeSet is a scoped agent's scope and what the control plane answered
// of it. Its lock is a leaf: held for no call into the rest of the agent.
type scopeSet struct {
	on bool // Config.Scope was set

	mu      sync.Mutex
	entries []string // declared, then own and learnt, in order
	have    map[string]bool
	unsent  []string // added since the sync loop last took them
	// answered are the entries the control plane answered (applied): a
	// service of one of them that the agent does not hold does not exist.
	answered map[string]bool
	// dropped: the scope outgrew maxScopeEntries and the agent subscribes
	// to everything; all is set once such a snapshot was applied.
	dropped, all bool
	changed      chan struct{} // closed and replaced when answered grows
	// ask wakes the sync loop (unsent entries, or the scope dropped).
	ask chan struct{}
	// rescope: the stream ended to subscribe again with another scope;
	// the sync loop reconnects at once.
	rescope atomic.Bool
	waiters atomic.Int32
	log     func(msg string, args ...any)
}

func newScopeSet(declared []string, log func(string, ...any)) *scopeSet {
	s := &scopeSet{on: len(declared) > 0, have: map[string]bool{}, answered: map[string]bool{},
		changed: make(chan struct{}), ask: make(chan struct{}, 1), log: log}
	s.add(declared...)
	s.unsent = nil // the first subscribe names them
	return s
}

// add puts the valid new keys into the scope and wakes the sync loop to
// ask for them; past maxScopeEntries the scope is dropped (everything).
func (s *scopeSet) add(keys ...string) {
	if !s.on {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dropped {
		return
	}
	n := 0
	for _, k := range keys {
		if !validScopeEntry(k) || s.coversLocked(k, false) {
			continue
		}
		if len(s.entries) == maxScopeEntries {
			s.dropped = true
			s.log("agent: scope outgrew its bound; subscribing to every service", "entries", len(s.entries), "max", maxScopeEntries)
			s.wakeLocked()
			return
		}
		s.entries = append(s.entries, k)
		s.have[k] = true
		s.unsent = append(s.unsent, k)
		n++
	}
	if n > 0 {
		s.wakeLocked()
	}
}

func (s *scopeSet) wakeLocked() {
	select {
	case s.ask <- struct{}{}:
	default:
	}
}

// coversLocked tells whether key ("ns/name" or "ns/*") is in the scope
// (answered: and answered by the control plane).
func (s *scopeSet) coversLocked(key string, answered bool) bool {
	m := s.have
	if answered {
		if s.all {
			return true
		}
		m = s.answered
	}
	ns, _, _ := strings.Cut(key, "/")
	return m[key] || m[ns+"/*"]
}

// connectScope is the scope a new stream subscribes with (nil: everything);
// its subscribe names every entry, so none is left to send.
func (s *scopeSet) connectScope() *wire.Scope {
	if !s.on {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unsent = nil
	if s.dropped {
		return nil
	}
	return &wire.Scope{Services: append([]string(nil), s.entries...)}
}

// take returns the entries to ask for on the open stream, and whether the
// scope was dropped (the stream must end so the next one subscribes to
// everything).
func (s *scopeSet) take(scoped bool) (keys []string, resubscribe bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	keys, s.unsent = s.unsent, nil
	return keys, s.dropped && scoped
}

// answer records what an applied update answered; everything when an
// unscoped stream's snapshot was applied after the scope was dropped.
func (s *scopeSet) answer(keys []string, everything bool) {
	if !s.on || len(keys) == 0 && !everything {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range keys {
		s.answered[k] = true
	}
	if everything {
		s.all = true
	}
	s.notifyLocked()
}

// viewChanged wakes the waiters to check again: a service they wait for
// may have got a ready endpoint (FetchService), or may be known now
// (awaitService, also on an agent without a scope). rebuildLocked calls
// it after publishing a view; a.mu held, the scope's lock is a leaf.
func (s *scopeSet) viewChanged() {
	if s.waiters.Load() == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.notifyLocked()
}

func (s *scopeSet) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// wait waits until done holds, re-checking after every answer and every
// new view, or ctx ends.
func (s *scopeSet) wait(ctx context.Context, done func() bool) error {
	if n := s.waiters.Add(1); n > maxScopeWaiters {
		s.waiters.Add(-1)
		return errors.New("too many lookups waiting for the control plane")
	}
	defer s.waiters.Add(-1)
	for {
		s.mu.Lock()
		ch := s.changed
		s.mu.Unlock()
		if done() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

// answeredFor tells whether the control plane answered for key.
func (s *scopeSet) answeredFor(key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.coversLocked(key, true)
}

// LookupService implements meshdns.Resolver.
func (a *Agent) LookupService(namespace, name string) (meshdns.Record, bool) {
	if !a.serving.Load() {
		return meshdns.Record{}, false
	}
	sv := a.view.Load().services[namespace+"/"+name]
	if sv == nil {
		return meshdns.Record{}, false
	}
	var r meshdns.Record
	if isHeadless(sv.svc) {
		// Its ready pods' addresses instead of a virtual IP; the others
		// are left out (publishNotReadyAddresses is not honoured).
		r.Headless = true
		for _, ev := range sv.endpoints {
			if !ev.healthy {
				continue
			}
			if addr, err := netip.ParseAddr(ev.ep.Spec.Address); err == nil {
				r.Endpoints = append(r.Endpoints, meshdns.Endpoint{Addr: addr, Hostname: ev.ep.Spec.Hostname})
			}
		}
	} else {
		r = meshdns.Record{V4: sv.vip4, V6: sv.vip6, Unavailable: a.unavailable(namespace + "/" + name)}
	}
	for _, p := range sv.svc.Spec.Ports {
		r.Ports = append(r.Ports, meshdns.Port{Name: p.Name, Protocol: p.Protocol, Port: p.Port})
	}
	return r, true
}

var _ meshdns.Fetcher = (*Agent)(nil)

// FetchService implements meshdns.Fetcher: a scoped agent that does not
// hold namespace/name asks the control plane for it and waits up to
// scopeWait. Not found with no error: the control plane answered and the
// service does not exist.
//
// The answer waits for more than the service: a client connects as soon
// as it has the address, so the agent answers once it can take that
// connection, with a healthy endpoint in its view. The service can enter
// the scope before its endpoints do (the control plane answers with what
// it holds; an endpoint registered a moment later comes in the next
// update), and a VIP with no endpoint resets the connection. A service
// still without a healthy endpoint at the bound is answered all the same,
// as an unscoped agent answers it.
func (a *Agent) FetchService(ctx context.Context, namespace, name string) (meshdns.Record, bool, error) {
	if !a.scope.on || !a.serving.Load() {
		return meshdns.Record{}, false, nil
	}
	key := namespace + "/" + name
	a.scope.add(key)
	ctx, cancel := context.WithTimeout(ctx, scopeWait)
	defer cancel()
	err := a.scope.wait(ctx, func() bool {
		if r, ok := a.LookupService(namespace, name); ok {
			return r.Unavailable != "" || a.canServe(key)
		}
		return a.scope.answeredFor(key)
	})
	if r, ok := a.LookupService(namespace, name); ok {
		if err != nil {
			a.log.Debug("agent: answering a service learnt on demand with no healthy endpoint yet", "service", key, "waited", scopeWait)
		}
		return r, true, nil
	}
	if err != nil {
		a.m.scopeMisses.Inc()
		return meshdns.Record{}, false, fmt.Errorf("service %s not known yet: %w", key, err)
	}
	return meshdns.Record{}, false, nil
}

// canServe tells whether the view holds a healthy endpoint of service key
// (for a headless one: an address DNS can hand out).
func (a *Agent) canServe(key string) bool {
	sv := a.view.Load().services[key]
	if sv == nil {
		return false
	}
	for _, ev := range sv.endpoints {
		if ev.healthy {
			return true
		}
	}
	return false
}

// learnCaller is vouch's miss on a scoped agent: the identities node may
// claim come from its endpoints, which are known only for services in
// scope. It adds the claimed identity's namespace (every service whose
// endpoints may carry it lives there) and waits up to scopeWait for the
// control plane's answer; it tells whether node may now claim it.
func (a *Agent) learnCaller(ctx context.Context, node, claimed string) bool {
	if !a.scope.on {
		return false
	}
	id, err := spiffeid.FromString(claimed)
	if err != nil || id.TrustDomain() != a.ident.td {
		return false
	}
	rest, ok := strings.CutPrefix(id.Path(), "/ns/")
	ns, _, ok2 := strings.Cut(rest, "/sa/")
	if !ok || !ok2 || !isScopeLabel(ns) {
		return false
	}
	key := ns + "/*"
	a.scope.add(key)
	ctx, cancel := context.WithTimeout(ctx, scopeWait)
	defer cancel()
	claims := func() bool { return a.view.Load().nodeIDs[node][claimed] }
	a.scope.wait(ctx, func() bool { return claims() || a.scope.answeredFor(key) })
	return claims()
}

// scopeLocal adds the services of this node's workloads and the mirror
// destinations of the routes it holds (called with a.mu held; the scope's
// lock is a leaf).
func (a *Agent) scopeLocalLocked() {
	if !a.scope.on {
		return
	}
	var keys []string
	for _, ws := range a.workloads {
		keys = append(keys, api.NamespaceOr(ws.w.Namespace)+"/"+ws.w.Service)
	}
	for _, r := range a.res.routes {
		for _, rule := range r.Spec.Rules {
			if rule.Mirror != nil && rule.Mirror.Service != "" {
				keys = append(keys, r.Meta.Namespace+"/"+rule.Mirror.Service)
			}
		}
	}
	a.scope.add(keys...)
}
