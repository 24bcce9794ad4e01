// A region's view, kept up to date from the store's change log: most
// commits (endpoint health, routes, policies) are folded in from their
// changed keys alone; a change that can move other objects in or out of
// the view (a service's export, a node, an endpoint leaving) recomputes it
// from the whole store with regionView.

package control

import (
	"errors"
	"strings"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/store"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// viewState is what one region holds of this store, and what decides it.
type viewState struct {
	st       store.Backend
	reg      *registry
	region   string
	held     map[string]uint64 // key -> our version the region holds
	exported map[string]bool   // service "ns/name" -> exported to region, as of rev
	// hostOf is the node of each held endpoint of another region: the
	// nodes the region holds because of it.
	hostOf map[string]string
	rev    uint64 // the store revision held reflects (0: never computed)

	recomputes int // whole-store passes, for tests
}

func newViewState(s *Server, region string, held map[string]uint64) *viewState {
	if held == nil {
		held = map[string]uint64{}
	}
	return &viewState{st: s.st, reg: s.reg, region: region, held: held}
}

// errRecompute: the changes need the whole store to tell the new view.
var errRecompute = errors.New("recompute the view")

// next returns the update that brings the region from held to the
// current view (nil if none), and moves held there. full sends the whole
// view as a snapshot.
func (v *viewState) next(full bool) (*wire.Message, error) {
	if !full && v.rev != 0 {
		m, err := v.incremental()
		if !errors.Is(err, errRecompute) && !errors.Is(err, store.ErrCompacted) {
			return m, err
		}
	}
	return v.recompute(full)
}

// recompute diffs the view of the whole store against held.
func (v *viewState) recompute(full bool) (*wire.Message, error) {
	v.recomputes++
	objs, rev, err := v.reg.list("")
	if err != nil {
		return nil, err
	}
	m := &wire.Message{Type: wire.TypeUpdate, Version: rev, StoreID: v.st.ID(), Full: full}
	next := make(map[string]uint64, len(v.held))
	byKey := map[string]api.Object{}
	for _, o := range regionView(objs, v.region) {
		key, ver := api.ObjectKey(o), o.GetMeta().Version
		next[key] = ver
		byKey[key] = o
		if !full && v.held[key] == ver {
			continue
		}
		r, err := wire.NewResource(o)
		if err != nil {
			return nil, err
		}
		m.Resources = append(m.Resources, r)
	}
	if !full {
		for key := range v.held {
			if _, ok := next[key]; !ok {
				m.Removed = append(m.Removed, refOfKey(key))
			}
		}
	}
	v.exported, v.hostOf = map[string]bool{}, map[string]string{}
	for key := range next {
		if strings.HasPrefix(key, api.KindEndpoint+"/") {
			if o := byKey[key]; o.GetMeta().Owner != "" {
				v.hostOf[key] = o.(*api.Endpoint).Spec.Node
			}
		}
	}
	for _, o := range objs {
		if s, ok := o.(*api.Service); ok && s.ExportedTo(v.region) {
			v.exported[s.Meta.Key()] = true
		}
	}
	v.held, v.rev = next, rev
	if !full && len(m.Resources)+len(m.Removed) == 0 {
		return nil, nil
	}
	return m, nil
}

// incremental folds the changes after rev into the view, or returns
// errRecompute when one of them may move other objects: a service or node
// changed, an endpoint the region holds went away or out of the view or
// moved to another node (or owner), or an endpoint came into it on a node
// the region does not hold.
func (v *viewState) incremental() (*wire.Message, error) {
	changes, rev, err := v.st.ChangesSince(v.rev)
	if err != nil {
		return nil, err
	}
	m := &wire.Message{Type: wire.TypeUpdate, Version: rev, StoreID: v.st.ID()}
	puts, drops, hosts := map[string]uint64{}, []string{}, map[string]string{}
	for _, ch := range changes {
		kind, _, _ := strings.Cut(ch.Key, "/")
		if !replicated(kind) {
			continue
		}
		if kind == api.KindService || kind == api.KindNode {
			return nil, errRecompute
		}
		_, holds := v.held[ch.Key]
		if ch.Deleted {
			if holds {
				if kind == api.KindEndpoint {
					return nil, errRecompute
				}
				drops = append(drops, ch.Key)
			}
			continue
		}
		o, err := decodeKV(store.KV{Key: ch.Key, Rev: ch.Rev, Value: ch.Value})
		if err != nil {
			return nil, err
		}
		in := v.inView(o)
		e, isEp := o.(*api.Endpoint)
		oldHost, hosted := v.hostOf[ch.Key]
		switch {
		case !in && holds && isEp:
			return nil, errRecompute
		case !in && holds:
			drops = append(drops, ch.Key)
			continue
		case !in:
			continue
		case isEp && o.GetMeta().Owner != "":
			n := e.Spec.Node
			if holds && (!hosted || oldHost != n) {
				return nil, errRecompute
			}
			if _, ok := v.held[api.KindNode+"/"+n]; n != "" && !ok {
				return nil, errRecompute
			}
			hosts[ch.Key] = n
		case isEp && hosted:
			return nil, errRecompute // it held a node in the view; now global, it holds none
		}
		if v.held[ch.Key] == ch.Rev {
			continue
		}
		r, err := wire.NewResource(o)
		if err != nil {
			return nil, err
		}
		m.Resources = append(m.Resources, r)
		puts[ch.Key] = ch.Rev
	}
	for k, ver := range puts {
		v.held[k] = ver
	}
	for k, n := range hosts {
		v.hostOf[k] = n
	}
	for _, k := range drops {
		delete(v.held, k)
		m.Removed = append(m.Removed, refOfKey(k))
	}
	v.rev = rev
	if len(m.Resources)+len(m.Removed) == 0 {
		return nil, nil
	}
	return m, nil
}

// inView is regionRule for one object that is neither a service nor a
// node, given the services exported as of the last recompute.
func (v *viewState) inView(o api.Object) bool {
	return regionRule{region: v.region}.of(o, func(svc string) bool { return v.exported[svc] }) != viewOut
}
