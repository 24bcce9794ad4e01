package agent

import (
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
// TODO: bindings made while the control plane is unreachable live only in
// memory until the link returns; an agent restart in that window loses them.

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
		bound = a.localSessions[svc+"\x00"+key]
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
	a.localSessions[sv.svc.Meta.Key()+"\x00"+key] = endpoint
	a.pendingSessions[s.Meta.Key()] = s
	a.mu.Unlock()
	a.m.sessionBinds.Inc()
	select {
	case a.sessionsChanged <- struct{}{}:
	default:
	}
}

// takePendingSessions returns the bindings not yet sent upstream.
func (a *Agent) takePendingSessions() []api.Session {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.pendingSessions) == 0 {
		return nil
	}
	out := make([]api.Session, 0, len(a.pendingSessions))
	for k, s := range a.pendingSessions {
		out = append(out, s)
		delete(a.pendingSessions, k)
	}
	return out
}

// returnPendingSessions puts back bindings whose send failed, unless a
// newer one for the same key arrived meanwhile.
func (a *Agent) returnPendingSessions(ss []api.Session) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, s := range ss {
		if _, newer := a.pendingSessions[s.Meta.Key()]; !newer {
			a.pendingSessions[s.Meta.Key()] = s
		}
	}
}
