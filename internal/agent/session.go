package agent

import (
	"container/list"
	"net/http"

	"github.com/fogmesh/fogmesh/internal/api"
)

// Sessions: a request's session key (header or cookie) pins it to an
// endpoint. The control plane's binding (pushed to every agent) wins; until
// it has one, this agent's own decision holds and is reported upstream, so
// the binding follows a client that moves to another site and survives an
// agent restart (once the control plane has it, it is part of the cached
// configuration).
//
// Bindings are a cache, not state kept at any cost: any client can send a
// new session key with every request. An agent keeps at most
// maxLocalSessions of its own bindings per service, evicting the least
// recently bound (an evicted session that comes back is bound again, to the
// control plane's binding if it has one), and at most maxPendingSessions
// waiting to go upstream, dropping the oldest (the control plane bounds
// what it stores per service the same way).
//
// TODO: bindings made while the control plane is unreachable live only in
// memory until the link returns; an agent restart in that window loses them.

// The bounds on session bindings (variables for tests).
var (
	maxLocalSessions   = 10000 // per service
	maxPendingSessions = 10000 // in total
)

func sessionKey(req *http.Request, sa *api.SessionAffinity) string {
	if sa.Header != "" {
		if v := req.Header.Get(sa.Header); v != "" {
			return v
		}
	}
	if sa.Cookie != "" {
		if c, err := req.Cookie(sa.Cookie); err == nil {
			return c.Value
		}
	}
	return ""
}

// applySession puts the session's endpoint first in cands, binding the
// session to cands[0] when it has no usable binding (or, with policy
// "nearest", when a nearer tier than the bound one is available).
func (a *Agent) applySession(sv *serviceView, key string, cands []*endpointView) []*endpointView {
	svc := sv.svc.Meta.Key()
	bound, ok := sv.sessions[key]
	if !ok {
		a.mu.Lock()
		bound = a.localSessions.get(svc, key)
		a.mu.Unlock()
	}
	for i, ev := range cands {
		if ev.ep.Meta.Name != bound {
			continue
		}
		if sv.svc.Spec.Session.Policy == "nearest" && ev.tier > cands[0].tier {
			break // a nearer instance exists: rebind below
		}
		if i > 0 {
			cands = append([]*endpointView{ev}, append(cands[:i:i], cands[i+1:]...)...)
		}
		return cands
	}
	a.bindSession(sv, key, cands[0].ep.Meta.Name)
	return cands
}

func (a *Agent) bindSession(sv *serviceView, key, endpoint string) {
	s := api.Session{Meta: api.Meta{Namespace: sv.svc.Meta.Namespace},
		Spec: api.SessionSpec{Service: sv.svc.Meta.Name, Key: key, Endpoint: endpoint}}
	if s.Validate() != nil {
		return // e.g. a key longer than 256 bytes: served, not pinned
	}
	a.mu.Lock()
	evicted := a.localSessions.set(sv.svc.Meta.Key(), key, endpoint)
	dropped := a.pendingSessions.put(s)
	a.mu.Unlock()
	a.m.sessionBinds.Inc()
	a.m.sessionEvictions.Add(evicted)
	a.m.sessionsDropped.Add(dropped)
	select {
	case a.sessionsChanged <- struct{}{}:
	default:
	}
}

// takePendingSessions returns the bindings not yet sent upstream.
func (a *Agent) takePendingSessions() []api.Session {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.pendingSessions.take()
}

// returnPendingSessions puts back bindings whose send failed, unless a
// newer one for the same key arrived meanwhile; over the bound, the
// oldest go.
func (a *Agent) returnPendingSessions(ss []api.Session) {
	a.mu.Lock()
	dropped := a.pendingSessions.putBack(ss)
	a.mu.Unlock()
	a.m.sessionsDropped.Add(dropped)
}

// localBindings are this agent's own session bindings, per service, in
// the order they were bound. The zero value is empty; a.mu guards it.
type localBindings struct {
	svcs map[string]*svcBindings // service key (ns/name)
}

type svcBindings struct {
	keys  map[string]*list.Element // session key -> its element in order
	order list.List                // of *localBinding, least recently bound first
}

type localBinding struct{ key, endpoint string }

// get returns the endpoint key is bound to ("": none).
func (b *localBindings) get(svc, key string) string {
	if sb := b.svcs[svc]; sb != nil {
		if e := sb.keys[key]; e != nil {
			return e.Value.(*localBinding).endpoint
		}
	}
	return ""
}

// set binds key to endpoint, as the most recent binding of svc, and
// returns how many bindings it evicted to stay within maxLocalSessions.
func (b *localBindings) set(svc, key, endpoint string) (evicted int) {
	sb := b.svcs[svc]
	if sb == nil {
		if b.svcs == nil {
			b.svcs = map[string]*svcBindings{}
		}
		sb = &svcBindings{keys: map[string]*list.Element{}}
		b.svcs[svc] = sb
	}
	if e := sb.keys[key]; e != nil {
		e.Value.(*localBinding).endpoint = endpoint
		sb.order.MoveToBack(e)
		return 0
	}
	sb.keys[key] = sb.order.PushBack(&localBinding{key: key, endpoint: endpoint})
	for sb.order.Len() > max(maxLocalSessions, 1) {
		delete(sb.keys, sb.order.Remove(sb.order.Front()).(*localBinding).key)
		evicted++
	}
	return evicted
}

// count is how many bindings there are in all.
func (b *localBindings) count() int {
	n := 0
	for _, sb := range b.svcs {
		n += sb.order.Len()
	}
	return n
}

// pendingBindings are bindings not yet sent upstream, oldest first, by
// ns/name. The zero value is empty; a.mu guards it.
type pendingBindings struct {
	byName map[string]*list.Element // of *api.Session
	order  list.List
}

// put adds (or renews) s as the newest and returns how many of the oldest
// it dropped to stay within maxPendingSessions.
func (p *pendingBindings) put(s api.Session) (dropped int) {
	if e := p.byName[s.Meta.Key()]; e != nil {
		*e.Value.(*api.Session) = s
		p.order.MoveToBack(e)
		return 0
	}
	if p.byName == nil {
		p.byName = map[string]*list.Element{}
	}
	p.byName[s.Meta.Key()] = p.order.PushBack(&s)
	return p.trim()
}

// putBack adds ss, older than any pending now, except those renewed
// meanwhile, and returns how many it dropped (the oldest first).
func (p *pendingBindings) putBack(ss []api.Session) (dropped int) {
	if p.byName == nil {
		p.byName = map[string]*list.Element{}
	}
	for i := len(ss) - 1; i >= 0; i-- {
		if _, newer := p.byName[ss[i].Meta.Key()]; !newer {
			s := ss[i]
			p.byName[s.Meta.Key()] = p.order.PushFront(&s)
		}
	}
	return p.trim()
}

func (p *pendingBindings) trim() (dropped int) {
	for p.order.Len() > max(maxPendingSessions, 1) {
		delete(p.byName, p.order.Remove(p.order.Front()).(*api.Session).Meta.Key())
		dropped++
	}
	return dropped
}

// take empties p and returns what it held, oldest first.
func (p *pendingBindings) take() []api.Session {
	if p.order.Len() == 0 {
		return nil
	}
	out := make([]api.Session, 0, p.order.Len())
	for e := p.order.Front(); e != nil; e = e.Next() {
		out = append(out, *e.Value.(*api.Session))
	}
	p.order.Init()
	clear(p.byName)
	return out
}

func (a *Agent) sessionCountsForTest() (local, pending int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.localSessions.count(), a.pendingSessions.order.Len()
}

func (a *Agent) localSessionForTest(sv *serviceView, key string) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.localSessions.get(sv.svc.Meta.Key(), key)
}
