// What an agent connected straight to the global control plane receives:
// the hierarchy's rule (regionRule, with its own region's objects in), so
// that it gets its region's objects and the global plane's, and of other
// regions only what they export to its region, like an agent of a
// regional plane. A subscription's types and scope apply on top.

package control

import (
	"encoding/json"
	"sort"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/syncproto"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// agentGate is regionRule applied to one stream, with what it decided of
// other regions' objects, so that a change of export adds or removes the
// endpoints (and nodes) it concerns.
type agentGate struct {
	rule regionRule
	self string
	look func(key string) *feedEntry // the feed's current state
	// exported caches, for each service whose endpoints were decided,
	// whether it is exported to the region: a change of it decides them
	// again. A service not in it had none decided.
	exported map[string]bool
	// hosts are the nodes of the other regions' endpoints an unscoped
	// stream holds (a scoped one has sendState.refs).
	hosts *syncproto.NodeRefs
}

func newAgentGate(region, self string, fd *feed) *agentGate {
	g := &agentGate{rule: regionRule{region: region, own: true}, self: self, look: fd.get}
	g.reset(nil)
	return g
}

// reset starts the stream over from a snapshot's entries.
func (g *agentGate) reset(entries []*feedEntry) {
	g.exported, g.hosts = map[string]bool{}, syncproto.NewNodeRefs(g.self)
	g.learn(entries)
}

// learn records the export of the services among entries (a snapshot's,
// or what enters a widened scope), read at the entries' revision, unless
// the stream decided with another already: a later change of the service
// then sweeps what it decided (swept).
func (g *agentGate) learn(entries []*feedEntry) {
	for _, e := range entries {
		if _, known := g.exported[e.ref.Name]; e.ref.Type == api.KindService && !known {
			g.exported[e.ref.Name] = g.exportedBy(e)
		}
	}
}

func (g *agentGate) exportedBy(e *feedEntry) bool {
	s, ok := e.obj.(*api.Service)
	return !e.deleted && ok && s.ExportedTo(g.rule.region)
}

// isExported tells whether the service "ns/name" is exported to the
// region, as this stream knows it (from the feed the first time).
func (g *agentGate) isExported(svc string) bool {
	v, ok := g.exported[svc]
	if !ok {
		e := g.look(api.KindService + "/" + svc)
		v = e != nil && g.exportedBy(e)
		g.exported[svc] = v
	}
	return v
}

// service takes a service's change from a delta and tells whether its
// export to the region changed for endpoints already decided.
func (g *agentGate) service(e *feedEntry) bool {
	old, known := g.exported[e.ref.Name]
	now := g.exportedBy(e)
	g.exported[e.ref.Name] = now
	return known && old != now
}

// swept takes the services' changes of a delta and returns the endpoints,
// not in it, of those whose export to the region changed: they are
// decided again.
func (g *agentGate) swept(fd *feed, entries []*feedEntry) []*feedEntry {
	var svcs []string
	for _, e := range entries {
		if e.ref.Type == api.KindService && g.service(e) {
			svcs = append(svcs, e.ref.Name)
		}
	}
	if len(svcs) == 0 {
		return nil
	}
	inDelta := make(map[string]bool, len(entries))
	for _, e := range entries {
		inDelta[e.key] = true
	}
	var out []*feedEntry
	for _, svc := range svcs {
		for _, e := range fd.serviceEntries(svc) {
			if e.ref.Type == api.KindEndpoint && !inDelta[e.key] {
				out = append(out, e)
			}
		}
	}
	return out
}

// verdict is the rule's answer for a live entry (viewOut when deleted).
func (g *agentGate) verdict(e *feedEntry) verdict {
	if e.deleted || e.obj == nil {
		return viewOut
	}
	return g.rule.of(e.obj, g.isExported)
}

// in tells whether a scoped stream may hold e (its nodes are decided by
// its endpoints, as always for a scoped stream).
func (g *agentGate) in(e *feedEntry) bool {
	v := g.verdict(e)
	return v == viewIn || v == viewExported
}

// snapshot filters a snapshot for an unscoped stream.
func (ss *sendState) gatedSnapshot(snap *feedSnap) *update {
	g := ss.gate
	u := ss.newUpdate(snap.rev, true)
	for _, e := range snap.entries {
		if e.ref.Type == api.KindEndpoint && ss.f.Match(e.obj) && g.verdict(e) == viewExported {
			g.hosts.Endpoint(e.key, e.node)
		}
	}
	for _, e := range snap.entries {
		if !ss.f.Match(e.obj) {
			continue
		}
		if v := g.verdict(e); v == viewIn || v == viewExported || v == viewIfHosted && g.hosts.Wants(e.ref.Name) {
			u.addRes(e)
		}
	}
	return u
}

// gatedDelta is what changed after the subscriber's version, up to rev,
// for an unscoped stream: as delta, of other regions' objects only what
// the region sees, and when a service's export changed, its endpoints
// (and their nodes) enter or leave. Like delta, it sends the removal of
// any changed object out of the view: it may have been held (an unscoped
// stream keeps no list of what it holds), at the cost of a reference per
// change of another region's unexported object.
func (ss *sendState) gatedDelta(fd *feed, entries []*feedEntry, rev uint64) *update {
	g := ss.gate
	u := ss.newUpdate(rev, false)
	if more := g.swept(fd, entries); len(more) > 0 {
		entries = append(entries[:len(entries):len(entries)], more...) // the feed's slice is shared
	}
	touched := map[string]*feedEntry{} // nodes to decide on, with their entry in this delta if any
	decide := func(e *feedEntry) {
		if !ss.f.Wants(e.ref.Type) {
			return
		}
		if e.ref.Type == api.KindNode {
			touched[e.ref.Name] = e
			return
		}
		v := g.verdict(e)
		in := !e.deleted && ss.f.Match(e.obj) && (v == viewIn || v == viewExported)
		if e.ref.Type == api.KindEndpoint {
			node := ""
			if in && v == viewExported {
				node = e.node
			}
			entered, left := g.hosts.Endpoint(e.key, node)
			for _, n := range []string{entered, left} {
				if _, ok := touched[n]; n != "" && !ok {
					touched[n] = nil
				}
			}
		}
		if in {
			u.addRes(e)
		} else {
			u.addRemoved(e)
		}
	}
	for _, e := range entries {
		decide(e)
	}
	names := make([]string, 0, len(touched))
	for n := range touched {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		e, inD := touched[n], touched[n] != nil
		if !inD {
			e = fd.get(api.KindNode + "/" + n)
		}
		v := viewOut
		if e != nil && !e.deleted && ss.f.Match(e.obj) {
			v = g.verdict(e)
		}
		switch {
		case v == viewIn:
			if inD {
				u.addRes(e)
			}
		case v == viewIfHosted && g.hosts.Wants(n):
			u.addRes(e) // in the delta, or it entered: an endpoint in the view runs there now
		default:
			if e == nil {
				e = &feedEntry{ref: wire.ResourceRef{Type: api.KindNode, Name: n}}
				e.refEnc, _ = json.Marshal(e.ref)
			}
			u.addRemoved(e)
		}
	}
	return u
}

// serviceEntries returns the current entries of the service "ns/name"
// and of what belongs to it.
func (f *feed) serviceEntries(svc string) []*feedEntry {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]*feedEntry, 0, len(f.bySvc[svc]))
	for _, e := range f.bySvc[svc] {
		out = append(out, e)
	}
	return out
}
