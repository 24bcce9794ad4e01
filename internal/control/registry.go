package control

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/store"
)

// ErrNotFound is returned when a named object does not exist.
var ErrNotFound = errors.New("not found")

// registry is the typed view of the store.
type registry struct {
	st      store.Backend
	vipBase netip.Prefix
	// owner is what this control plane stamps on the objects it writes
	// (api.Meta.Owner): its region, or "" for the global one. Objects of
	// another owner are replicas it may not change (docs/regions.md).
	owner string
	// vipMin and vipMax bound the VIP indexes allocated here (0: the
	// range's ends).
	vipMin, vipMax uint32

	// feedp follows the store for the sync streams; set before the sync
	// listener accepts (acceptSync).
	feedp atomic.Pointer[feed]

	// mu guards the in-memory indexes below, built on first use from the
	// store and kept by the registry's own writes, so that neither a new
	// service nor an agent's endpoint list scans the whole store.
	mu sync.Mutex
	// vips are the service virtual IP indexes in use (nil: rebuild);
	// vipNext is at or below the lowest free one.
	vips    map[uint32]bool
	vipNext uint32
	// byNode maps a node to the keys of endpoints stored with it: a
	// superset (each key is checked in the transaction that uses it).
	byNode map[string]map[string]bool
	// sessCount counts the stored sessions this control plane owns per
	// service (ns/name; nil: rebuild), an estimate (sessions.go).
	sessCount map[string]int

	mSessionEvictions *metrics.Counter // nil in tests without a server
	mSessionsDropped  *metrics.Counter // agents' sessions dropped (agentSessions)

	// maxPerNode bounds one node's endpoints (0: DefaultMaxEndpointsPerNode);
	// mEndpointsRefused counts those refused past it (endpointcap.go).
	maxPerNode        int
	mEndpointsRefused *metrics.Counter // nil in tests without a server
}

// feed is the store's feed (nil before Serve).
func (r *registry) feed() *feed { return r.feedp.Load() }

// decoded counts stored objects decoded (decodeKV): the feed's tests check
// that a change is decoded once however many streams send it.
var decoded atomic.Int64

func decodeKV(kv store.KV) (api.Object, error) {
	decoded.Add(1)
	o, err := api.DecodeObject(kv.Value)
	if err != nil {
		return nil, fmt.Errorf("stored object %s: %w", kv.Key, err)
	}
	o.GetMeta().Version = kv.Rev
	return o, nil
}

// list returns every object of a kind ("" = all kinds).
func (r *registry) list(kind string) ([]api.Object, uint64, error) {
	prefix := ""
	if kind != "" {
		prefix = kind + "/"
	}
	kvs, rev, err := r.st.List(prefix)
	if err != nil {
		return nil, 0, err
	}
	out := make([]api.Object, 0, len(kvs))
	for _, kv := range kvs {
		o, err := decodeKV(kv)
		if err != nil {
			return nil, 0, err
		}
		out = append(out, o)
	}
	return out, rev, nil
}

// putLocked writes o at the transaction's revision if its content changed.
func putLocked(tx *store.Tx, o api.Object) error {
	key := api.ObjectKey(o)
	o.GetMeta().Version = 0
	b, err := json.Marshal(o)
	if err != nil {
		return err
	}
	if old, ok := tx.Get(key); ok && bytes.Equal(old.Value, b) {
		o.GetMeta().Version = old.Rev
		return nil
	}
	o.GetMeta().Version = tx.Rev()
	return tx.Put(key, b)
}

func getLocked[T api.Object](tx *store.Tx, key string, into T) (T, bool) {
	kv, ok := tx.Get(key)
	if !ok {
		return into, false
	}
	if json.Unmarshal(kv.Value, into) != nil {
		return into, false
	}
	into.GetMeta().Version = kv.Rev
	return into, true
}

// apply stores objects atomically. Services keep their virtual IP or get the
// lowest free one. Statuses of existing nodes are preserved.
func (r *registry) apply(objs []api.Object) (uint64, error) { return r.applyFrom(objs, false) }

// applyAdmin is apply for the admin API: a session there names its
// endpoint by hand (`fogmesh session move`), so it must exist. Agents'
// sessions (apply) bind endpoints they route to, which this control plane
// may not hold (another region's).
func (r *registry) applyAdmin(objs []api.Object) (uint64, error) { return r.applyFrom(objs, true) }

func (r *registry) applyFrom(objs []api.Object, checkSessions bool) (uint64, error) {
	objs = newestSessions(objs)
	counts := r.sessionCounts(objs)
	runs := 0
	var sb sessionBatch
	rev, err := r.st.Update(func(tx *store.Tx) error {
		runs++
		sb = sessionBatch{}
		for i, o := range objs {
			if err := r.claimLocked(tx, o); err != nil {
				return err
			}
			switch v := o.(type) {
			case *api.Service:
				if err := r.allocateVIPLocked(tx, v); err != nil {
					return err
				}
			case *api.Node:
				if old, ok := getLocked(tx, api.ObjectKey(v), new(api.Node)); ok {
					v.Status = old.Status
				}
			case *api.Endpoint:
				if v.Spec.Node == "" {
					v.Status.Healthy = true // static endpoints start healthy
				} else {
					r.noteEndpointLocked(tx, v.Spec.Node, api.ObjectKey(v))
				}
			case *api.Session:
				sb.noteSessionLocked(tx, v, i)
			}
			if err := putLocked(tx, o); err != nil {
				return fmt.Errorf("%s: %w", api.ObjectKey(o), err)
			}
		}
		for _, o := range objs { // after the loop: the batch's own services and endpoints count
			if ss, ok := o.(*api.Session); ok && checkSessions {
				if err := sessionTargetLocked(tx, ss); err != nil {
					return err
				}
			}
		}
		return r.trimSessionsLocked(tx, &sb, counts)
	})
	if err != nil || runs > 1 {
		// An index taken in a failed transaction, or in a first run of a
		// group commit that was rolled back, is free again.
		r.forgetVIPs()
	}
	if err == nil {
		r.sessionsWritten(&sb)
	}
	return rev, err
}

// errBadSession marks a session whose service or endpoint does not exist:
// the admin API answers 400.
var errBadSession = errors.New("session")

// sessionTargetLocked refuses a session (`fogmesh session move`) whose
// service does not exist or whose endpoint is not one of that service's:
// stored, it would pin the key to nothing, and every agent would drop it.
func sessionTargetLocked(tx *store.Tx, ss *api.Session) error {
	ns := api.NamespaceOr(ss.Meta.Namespace)
	svc := ns + "/" + ss.Spec.Service
	if _, ok := tx.Get(api.KindService + "/" + svc); !ok {
		return fmt.Errorf("%w: service %s does not exist (see fogmesh get services; -n sets the namespace)", errBadSession, svc)
	}
	var have []string
	for _, kv := range tx.List(api.KindEndpoint + "/" + ns + "/") {
		var e api.Endpoint
		if json.Unmarshal(kv.Value, &e) != nil || e.Spec.Service != ss.Spec.Service {
			continue
		}
		if e.Meta.Name == ss.Spec.Endpoint {
			return nil
		}
		have = append(have, e.Meta.Name)
	}
	if len(have) == 0 {
		return fmt.Errorf("%w: endpoint %s is not an endpoint of %s, which has none", errBadSession, ss.Spec.Endpoint, svc)
	}
	return fmt.Errorf("%w: endpoint %s is not an endpoint of %s (it has: %s)", errBadSession, ss.Spec.Endpoint, svc, strings.Join(have, ", "))
}

// forgetVIPs drops the set of used virtual IPs; the next allocation reads
// it from the store again.
func (r *registry) forgetVIPs() {
	r.mu.Lock()
	r.vips = nil
	r.mu.Unlock()
}

// allocateVIPLocked keeps s's virtual IP or gives it the lowest free one,
// from the in-memory set of used ones (read from the store once, O(S)),
// so that creating S services costs O(S), not O(S²).
func (r *registry) allocateVIPLocked(tx *store.Tx, s *api.Service) error {
	if old, ok := getLocked(tx, api.ObjectKey(s), new(api.Service)); ok && old.Status.VIPIndex != 0 {
		s.Status = old.Status
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.vips == nil || r.st.Shared() { // other replicas allocate too
		r.vips, r.vipNext = map[uint32]bool{}, 1
		for _, kv := range tx.List(api.KindService + "/") {
			var o api.Service
			if json.Unmarshal(kv.Value, &o) == nil && o.Status.VIPIndex != 0 {
				r.vips[o.Status.VIPIndex] = true
			}
		}
	}
	limit := uint32(1)<<(32-r.vipBase.Bits()) - 2
	if r.vipMax != 0 {
		limit = min(limit, r.vipMax)
	}
	for i := max(r.vipNext, r.vipMin, 1); i <= limit; i++ {
		if !r.vips[i] {
			r.vips[i], r.vipNext = true, i+1
			s.Status.VIPIndex = i
			s.Status.VIP = api.VIPFor(r.vipBase, i).String()
			return nil
		}
	}
	return fmt.Errorf("service %s: virtual IP range %s is full", s.Meta.Key(), r.vipBase)
}

// freeVIP returns a deleted service's virtual IP index to the free set.
func (r *registry) freeVIP(i uint32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.vips != nil && i != 0 {
		delete(r.vips, i)
		r.vipNext = min(r.vipNext, i)
	}
}

// nodeEndpointsLocked returns the keys of endpoints that may belong to
// node (a superset), building the index from the store on first use.
func (r *registry) nodeEndpointsLocked(tx *store.Tx, node string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.buildByNodeLocked(tx)
	keys := make([]string, 0, len(r.byNode[node]))
	for k := range r.byNode[node] {
		keys = append(keys, k)
	}
	return keys
}

func (r *registry) buildByNodeLocked(tx *store.Tx) {
	if r.byNode != nil && !r.st.Shared() { // other replicas write endpoints too
		return
	}
	r.indexByNodeLocked(tx.List(api.KindEndpoint + "/"))
}

// indexByNodeLocked builds byNode from the stored endpoints kvs.
func (r *registry) indexByNodeLocked(kvs []store.KV) {
	r.byNode = map[string]map[string]bool{}
	for _, kv := range kvs {
		var e api.Endpoint
		if json.Unmarshal(kv.Value, &e) == nil && e.Spec.Node != "" {
			r.addByNodeLocked(e.Spec.Node, kv.Key)
		}
	}
}

// localWrites counts the write transactions of syncLocalEndpoints (tests).
var localWrites atomic.Int64

func (r *registry) addByNodeLocked(node, key string) {
	m := r.byNode[node]
	if m == nil {
		m = map[string]bool{}
		r.byNode[node] = m
	}
	m[key] = true
}

// noteEndpointLocked records that the endpoint key is written with node.
func (r *registry) noteEndpointLocked(tx *store.Tx, node, key string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.buildByNodeLocked(tx)
	r.addByNodeLocked(node, key)
}

// dropByNode forgets key under node (it is gone or on another node).
func (r *registry) dropByNode(node, key string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if m := r.byNode[node]; m != nil {
		delete(m, key)
		if len(m) == 0 {
			delete(r.byNode, node)
		}
	}
}

// deleteObj removes Kind/ns/name.
func (r *registry) deleteObj(kind, ns, name string) (uint64, error) {
	key := kind + "/" + api.NamespaceOr(ns) + "/" + name
	if kind == api.KindNode {
		key = kind + "/" + name
	}
	var found bool
	var freed uint32 // a deleted service's virtual IP index
	rev, err := r.st.Update(func(tx *store.Tx) error {
		kv, ok := tx.Get(key)
		if !ok {
			return nil
		}
		found = true
		if err := r.ownsLocked(key, kv); err != nil {
			return err
		}
		if kind == api.KindNode { // a node's endpoints go with it
			for _, k := range r.nodeEndpointsLocked(tx, name) {
				e, ok := getLocked(tx, k, new(api.Endpoint))
				if !ok || e.Spec.Node != name {
					r.dropByNode(name, k)
					continue
				}
				if err := tx.Delete(k); err != nil {
					return err
				}
			}
		}
		if kind == api.KindService {
			if s, ok := getLocked(tx, key, new(api.Service)); ok {
				freed = s.Status.VIPIndex
			}
		}
		return tx.Delete(key)
	})
	if err == nil && freed != 0 {
		r.freeVIP(freed)
	}
	if err == nil && !found {
		return 0, fmt.Errorf("%s %s: %w", strings.ToLower(kind), strings.TrimPrefix(key, kind+"/"), ErrNotFound)
	}
	return rev, err
}

// registerNode upserts an agent's node, keeping status, and marks it ready.
// A reconnecting agent whose node is stored as is costs a read, not a
// write transaction (a resync storm after a restart is mostly these).
func (r *registry) registerNode(n *api.Node) error {
	// Only Ready is stored; heartbeat time, load and acked version
	// change every few seconds and live in memory (see Server.live).
	n.Status = api.NodeStatus{Ready: true}
	n.Meta.Owner = r.owner
	if r.stored(n) {
		return nil
	}
	_, err := r.st.Update(func(tx *store.Tx) error {
		if err := r.claimLocked(tx, n); err != nil {
			return err
		}
		return putLocked(tx, n)
	})
	return err
}

// stored tells whether o is stored exactly as it is (putLocked would
// write nothing); it sets o's version to the stored one when so.
func (r *registry) stored(o api.Object) bool {
	kv, ok, err := r.st.Get(api.ObjectKey(o))
	if err != nil || !ok {
		return false
	}
	ver := o.GetMeta().Version
	o.GetMeta().Version = 0
	b, err := json.Marshal(o)
	if err != nil || !bytes.Equal(kv.Value, b) {
		o.GetMeta().Version = ver
		return false
	}
	o.GetMeta().Version = kv.Rev
	return true
}

// readyReads counts the store reads of setNodeReady (tests).
var readyReads atomic.Int64

// setNodeReady flips a node's Ready flag and clears Unreachable (see
// setNodeStatus).
func (r *registry) setNodeReady(name string, ready bool) error {
	return r.setNodeStatus(name, ready, false, time.Time{})
}

// setNodeStatus sets a node's Ready and Unreachable flags (expiry.go).
// The common case, a heartbeat from a node already ready (2,000 a second
// at 10,000 agents), is answered from the feed's decoded node when the
// feed is at the store's revision (embedded store: reading its revision
// is local; on etcd it is a round trip like the read it would save); else
// it reads the store first, so it costs no write transaction either.
func (r *registry) setNodeStatus(name string, ready, unreachable bool, since time.Time) error {
	if fd := r.feed(); fd != nil && !r.st.Shared() {
		if rev, err := r.st.Rev(); err == nil {
			if cr, cu, ok := fd.nodeReady(name, rev); ok && cr == ready && cu == unreachable {
				return nil
			}
		}
	}
	readyReads.Add(1)
	kv, ok, err := r.st.Get(api.KindNode + "/" + name)
	if err != nil || !ok {
		return err
	}
	same := func(st api.NodeStatus) bool { return st.Ready == ready && st.Unreachable == unreachable }
	var cur api.Node
	if json.Unmarshal(kv.Value, &cur) == nil && same(cur.Status) {
		return nil
	}
	if !unreachable {
		since = time.Time{}
	}
	_, err = r.st.Update(func(tx *store.Tx) error {
		n, ok := getLocked(tx, api.KindNode+"/"+name, new(api.Node))
		if !ok || same(n.Status) || n.Meta.Owner != r.owner {
			return nil
		}
		n.Status.Ready, n.Status.Unreachable, n.Status.UnreachableSince = ready, unreachable, since.UTC()
		return putLocked(tx, n)
	})
	return err
}

// syncLocalEndpoints makes the stored endpoints owned by node equal eps.
func (r *registry) syncLocalEndpoints(node string, eps []api.Endpoint) error {
	for i := range eps {
		eps[i].Spec.Node = node
		if err := eps[i].Validate(); err != nil {
			return fmt.Errorf("endpoint %s: %w", eps[i].Meta.Key(), err)
		}
	}
	if len(eps) == 0 {
		r.mu.Lock()
		if r.byNode == nil && !r.st.Shared() {
			// First use since start: build the index from a read, not in
			// a write transaction (after a restart every agent's first
			// local{} comes here at once, and each took the store's
			// writer while the first built the index).
			if kvs, _, err := r.st.List(api.KindEndpoint + "/"); err == nil {
				r.indexByNodeLocked(kvs)
			}
		}
		none := r.byNode != nil && len(r.byNode[node]) == 0
		r.mu.Unlock()
		if none { // the common connect of a node without workloads: no write
			return nil
		}
	}
	localWrites.Add(1)
	var left []string // past the bound (endpointcap.go)
	_, err := r.st.Update(func(tx *store.Tx) error {
		want := map[string]bool{}
		// A node not stored (served while the store could not record it)
		// has no site: a service that bounds its sites refuses it.
		n, _ := getLocked(tx, api.KindNode+"/"+node, new(api.Node))
		var keep []api.Endpoint
		keep, left = r.capLocked(tx, node, eps)
		for i := range keep {
			key := api.ObjectKey(&keep[i])
			if old, ok := getLocked(tx, key, new(api.Endpoint)); ok && old.Spec.Node != node {
				return fmt.Errorf("endpoint %s belongs to node %q", keep[i].Meta.Key(), old.Spec.Node)
			}
			// An agent's endpoint claims a workload identity: only one the
			// service allows, on a site it allows.
			e := &keep[i]
			if svc, ok := getLocked(tx, api.KindService+"/"+e.Meta.Namespace+"/"+e.Spec.Service, new(api.Service)); ok {
				if !svc.AllowsAccount(e.Spec.ServiceAccount) {
					return fmt.Errorf("endpoint %s: service account %q is not allowed by service %s (spec.identity.serviceAccounts)",
						e.Meta.Key(), e.Spec.ServiceAccount, svc.Meta.Key())
				}
				if !svc.AllowsSite(n.Spec.Site) {
					return fmt.Errorf("endpoint %s: site %q is not allowed by service %s (spec.identity.sites)", e.Meta.Key(), n.Spec.Site, svc.Meta.Key())
				}
			}
			want[key] = true
			if err := r.claimLocked(tx, e); err != nil {
				return err
			}
			r.noteEndpointLocked(tx, node, key)
			if err := putLocked(tx, &keep[i]); err != nil {
				return err
			}
		}
		// Only this node's endpoints, from the index: O(its endpoints),
		// not O(every endpoint of the store); only those this control
		// plane owns (a region's replicas are its region's to change).
		for _, k := range r.nodeEndpointsLocked(tx, node) {
			if want[k] {
				continue
			}
			e, ok := getLocked(tx, k, new(api.Endpoint))
			if !ok || e.Spec.Node != node {
				r.dropByNode(node, k)
				continue
			}
			if e.Meta.Owner != r.owner || e.Meta.Labels[api.LabelSource] != "" {
				continue // a region's replica, or a cluster's pod on this node
			}
			if err := tx.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil && len(left) > 0 {
		err = r.tooMany(node, len(eps), left)
	}
	return err
}

// ErrOwned is returned for a write to an object another control plane owns
// (api.Meta.Owner): only its owner changes it (docs/regions.md).
var ErrOwned = errors.New("owned by another control plane")

// ownerName names an owner for errors and logs.
func ownerName(owner string) string {
	if owner == "" {
		return "the global control plane"
	}
	return "region " + owner
}

// ownsLocked refuses a change to the stored kv if another control plane
// owns it.
func (r *registry) ownsLocked(key string, kv store.KV) error {
	var m struct {
		Meta api.Meta `json:"metadata"`
	}
	if json.Unmarshal(kv.Value, &m) != nil || m.Meta.Owner == r.owner {
		return nil
	}
	return fmt.Errorf("%s is %w, %s: change it there", key, ErrOwned, ownerName(m.Meta.Owner))
}

// claimLocked stamps o with this control plane as owner, unless the stored
// object of its key belongs to another one.
func (r *registry) claimLocked(tx *store.Tx, o api.Object) error {
	key := api.ObjectKey(o)
	if kv, ok := tx.Get(key); ok {
		if err := r.ownsLocked(key, kv); err != nil {
			return err
		}
		if err := sourceLocked(key, kv, o); err != nil {
			return err
		}
	}
	o.GetMeta().Owner = r.owner
	return nil
}
