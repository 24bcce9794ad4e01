package control

import (
	"cmp"
	"encoding/json"
	"slices"
	"strings"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/store"
)

// Session bindings are a cache, not state kept at any cost: any client of a
// service with session affinity can send a new session key with every
// request, and every binding is stored here and sent to every agent. So
// this control plane keeps at most maxSessionsPerService of the sessions
// it owns per service. A batch (from an agent, or the admin API: `fogmesh
// session move` is never refused for it) that would pass the bound evicts
// the least recently written ones, down to nine tenths of the bound, so
// that the scan that finds them (the namespace's sessions) runs once per
// tenth of the bound added, not once per batch. An evicted session that
// comes back is bound again, perhaps to another instance.
//
// The count per service is kept in memory, built from the store on first
// use and corrected by each eviction's scan. With a shared store each
// replica counts only its own additions since its last scan, so a service
// may pass the bound by what the other replicas added meanwhile, until one
// of them next evicts. Sessions another control plane owns (a region's
// replicas) neither count nor are evicted here: their owner bounds them.

// maxSessionsPerService bounds the sessions stored per service (a variable
// for tests).
var maxSessionsPerService = 10000

// sessionTarget is what an eviction leaves: a tenth of the bound below it.
func sessionTarget() int { return maxSessionsPerService - maxSessionsPerService/10 }

// sessionService is the service key (ns/name) of a session.
func sessionService(ss *api.Session) string {
	return api.NamespaceOr(ss.Meta.Namespace) + "/" + ss.Spec.Service
}

// newestSessions returns objs without the sessions of a service that come
// before its last maxSessionsPerService in objs (a batch over the bound by
// itself: an agent's pending bindings are sent oldest first).
func newestSessions(objs []api.Object) []api.Object {
	per := map[string]int{}
	for _, o := range objs {
		if ss, ok := o.(*api.Session); ok {
			per[sessionService(ss)]++
		}
	}
	over := false
	for _, n := range per {
		over = over || n > maxSessionsPerService
	}
	if !over {
		return objs
	}
	out := make([]api.Object, 0, len(objs))
	for _, o := range objs {
		if ss, ok := o.(*api.Session); ok {
			svc := sessionService(ss)
			if per[svc] > maxSessionsPerService {
				per[svc]--
				continue
			}
		}
		out = append(out, o)
	}
	return out
}

// sessionBatch is what one run of an apply transaction did to sessions,
// for the counts once it commits.
type sessionBatch struct {
	added   map[string]int // service -> sessions new to the store
	exact   map[string]int // service -> sessions left by an eviction's scan
	pos     map[string]int // store key -> position in the batch (its age)
	evicted int
}

// noteSessionLocked records ss, about to be written at its position i in
// the batch; before putLocked, so that it can tell a new key.
func (b *sessionBatch) noteSessionLocked(tx *store.Tx, ss *api.Session, i int) {
	key := api.ObjectKey(ss)
	if b.pos == nil {
		b.added, b.exact, b.pos = map[string]int{}, map[string]int{}, map[string]int{}
	}
	b.pos[key] = i
	if _, ok := tx.Get(key); !ok {
		b.added[sessionService(ss)]++
	}
}

// sessionCounts returns how many stored sessions this control plane owns
// for each service of a session in objs (nil: objs has none, or the
// counts could not be read), reading every service's from the store on
// first use.
func (r *registry) sessionCounts(objs []api.Object) map[string]int {
	var counts map[string]int
	for _, o := range objs {
		if ss, ok := o.(*api.Session); ok {
			if counts == nil {
				counts = map[string]int{}
			}
			counts[sessionService(ss)] = 0
		}
	}
	if counts == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sessCount == nil {
		kvs, _, err := r.st.List(api.KindSession + "/")
		if err != nil {
			return nil // the next eviction's scan counts
		}
		r.sessCount = map[string]int{}
		for _, kv := range kvs {
			var ss api.Session
			if json.Unmarshal(kv.Value, &ss) == nil && ss.Meta.Owner == r.owner {
				r.sessCount[sessionService(&ss)]++
			}
		}
	}
	for svc := range counts {
		counts[svc] = r.sessCount[svc]
	}
	return counts
}

// trimSessionsLocked evicts the least recently written sessions of each
// service b added to that would pass the bound. counts are those from
// before the transaction (sessionCounts; nil: unknown, scan).
func (r *registry) trimSessionsLocked(tx *store.Tx, b *sessionBatch, counts map[string]int) error {
	for svc, n := range b.added {
		if counts != nil && counts[svc]+n <= maxSessionsPerService {
			continue
		}
		ns, name, _ := strings.Cut(svc, "/")
		type aged struct {
			key      string
			rev      uint64
			position int
		}
		var own []aged
		for _, kv := range tx.List(api.KindSession + "/" + ns + "/") {
			var ss api.Session
			if json.Unmarshal(kv.Value, &ss) != nil || ss.Spec.Service != name || ss.Meta.Owner != r.owner {
				continue
			}
			p, ok := b.pos[kv.Key]
			if !ok || kv.Rev != tx.Rev() {
				p = -1 // written before this batch
			}
			own = append(own, aged{kv.Key, kv.Rev, p})
		}
		if len(own) > maxSessionsPerService {
			slices.SortFunc(own, func(x, y aged) int { return cmp.Or(cmp.Compare(x.rev, y.rev), cmp.Compare(x.position, y.position)) })
			drop := len(own) - sessionTarget()
			for _, o := range own[:drop] {
				if err := tx.Delete(o.key); err != nil {
					return err
				}
			}
			own = own[drop:]
			b.evicted += drop
		}
		b.exact[svc] = len(own)
	}
	return nil
}

// sessionsWritten updates the counts for the committed batch b.
func (r *registry) sessionsWritten(b *sessionBatch) {
	if b.evicted > 0 && r.mSessionEvictions != nil {
		r.mSessionEvictions.Add(b.evicted)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sessCount == nil {
		return
	}
	for svc, n := range b.added {
		if e, ok := b.exact[svc]; ok {
			r.sessCount[svc] = e
		} else {
			r.sessCount[svc] += n
		}
	}
}

// agentSessions returns the sessions of an agent's batch whose service
// exists here and pins sessions (spec.session), and how many it dropped.
// An agent binds keys only of services its view gives session affinity,
// so the others are an agent's error or a compromised agent inventing
// service names, each of which would otherwise get its own
// maxSessionsPerService in the store and in every agent's view.
func (r *registry) agentSessions(in []api.Session) (objs []api.Object, dropped int) {
	pins := map[string]bool{} // service key -> it exists and pins sessions
	objs = make([]api.Object, 0, len(in))
	for i := range in {
		ss := &in[i]
		svc := sessionService(ss)
		pin, seen := pins[svc]
		if !seen {
			var s api.Service
			if kv, ok, err := r.st.Get(api.KindService + "/" + svc); err == nil && ok && json.Unmarshal(kv.Value, &s) == nil {
				pin = s.Spec.Session != nil
			}
			pins[svc] = pin
		}
		if !pin {
			dropped++
			continue
		}
		objs = append(objs, ss)
	}
	return objs, dropped
}
