package control

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"

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
}

func decodeKV(kv store.KV) (api.Object, error) {
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
func (r *registry) apply(objs []api.Object) (uint64, error) {
	return r.st.Update(func(tx *store.Tx) error {
		for _, o := range objs {
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
				}
			}
			if err := putLocked(tx, o); err != nil {
				return fmt.Errorf("%s: %w", api.ObjectKey(o), err)
			}
		}
		return nil
	})
}

func (r *registry) allocateVIPLocked(tx *store.Tx, s *api.Service) error {
	if old, ok := getLocked(tx, api.ObjectKey(s), new(api.Service)); ok && old.Status.VIPIndex != 0 {
		s.Status = old.Status
		return nil
	}
	used := map[uint32]bool{}
	for _, kv := range tx.List(api.KindService + "/") {
		var o api.Service
		if json.Unmarshal(kv.Value, &o) == nil {
			used[o.Status.VIPIndex] = true
		}
	}
	limit := uint32(1)<<(32-r.vipBase.Bits()) - 2
	first := max(r.vipMin, 1)
	if r.vipMax != 0 {
		limit = min(limit, r.vipMax)
	}
	for i := first; i <= limit; i++ {
		if !used[i] {
			s.Status.VIPIndex = i
			s.Status.VIP = api.VIPFor(r.vipBase, i).String()
			return nil
		}
	}
	return fmt.Errorf("service %s: virtual IP range %s is full", s.Meta.Key(), r.vipBase)
}

// deleteObj removes Kind/ns/name.
func (r *registry) deleteObj(kind, ns, name string) (uint64, error) {
	key := kind + "/" + api.NamespaceOr(ns) + "/" + name
	if kind == api.KindNode {
		key = kind + "/" + name
	}
	var found bool
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
			for _, kv := range tx.List(api.KindEndpoint + "/") {
				var e api.Endpoint
				if json.Unmarshal(kv.Value, &e) == nil && e.Spec.Node == name {
					if err := tx.Delete(kv.Key); err != nil {
						return err
					}
				}
			}
		}
		return tx.Delete(key)
	})
	if err == nil && !found {
		return 0, fmt.Errorf("%s %s: %w", strings.ToLower(kind), strings.TrimPrefix(key, kind+"/"), ErrNotFound)
	}
	return rev, err
}

// registerNode upserts an agent's node, keeping status, and marks it ready.
func (r *registry) registerNode(n *api.Node) error {
	_, err := r.st.Update(func(tx *store.Tx) error {
		// Only Ready is stored; heartbeat time, load and acked version
		// change every few seconds and live in memory (see Server.live).
		n.Status = api.NodeStatus{Ready: true}
		if err := r.claimLocked(tx, n); err != nil {
			return err
		}
		return putLocked(tx, n)
	})
	return err
}

// setNodeReady flips a node's Ready flag. It reads first, so the common
// case (a heartbeat from a node already ready) costs no write transaction.
func (r *registry) setNodeReady(name string, ready bool) error {
	kv, ok, err := r.st.Get(api.KindNode + "/" + name)
	if err != nil || !ok {
		return err
	}
	var cur api.Node
	if json.Unmarshal(kv.Value, &cur) == nil && cur.Status.Ready == ready {
		return nil
	}
	_, err = r.st.Update(func(tx *store.Tx) error {
		n, ok := getLocked(tx, api.KindNode+"/"+name, new(api.Node))
		if !ok || n.Status.Ready == ready || n.Meta.Owner != r.owner {
			return nil
		}
		n.Status.Ready = ready
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
	_, err := r.st.Update(func(tx *store.Tx) error {
		want := map[string]bool{}
		n, nodeKnown := getLocked(tx, api.KindNode+"/"+node, new(api.Node))
		for i := range eps {
			key := api.ObjectKey(&eps[i])
			if old, ok := getLocked(tx, key, new(api.Endpoint)); ok && old.Spec.Node != node {
				return fmt.Errorf("endpoint %s belongs to node %q", eps[i].Meta.Key(), old.Spec.Node)
			}
			// An agent's endpoint claims a workload identity: only one the
			// service allows, on a site it allows.
			e := &eps[i]
			if svc, ok := getLocked(tx, api.KindService+"/"+e.Meta.Namespace+"/"+e.Spec.Service, new(api.Service)); ok {
				if !svc.AllowsAccount(e.Spec.ServiceAccount) {
					return fmt.Errorf("endpoint %s: service account %q is not allowed by service %s (spec.identity.serviceAccounts)",
						e.Meta.Key(), e.Spec.ServiceAccount, svc.Meta.Key())
				}
				if nodeKnown && !svc.AllowsSite(n.Spec.Site) {
					return fmt.Errorf("endpoint %s: site %q is not allowed by service %s (spec.identity.sites)", e.Meta.Key(), n.Spec.Site, svc.Meta.Key())
				}
			}
			want[key] = true
			if err := r.claimLocked(tx, e); err != nil {
				return err
			}
			if err := putLocked(tx, &eps[i]); err != nil {
				return err
			}
		}
		for _, kv := range tx.List(api.KindEndpoint + "/") {
			var e api.Endpoint
			if json.Unmarshal(kv.Value, &e) == nil && e.Spec.Node == node && !want[kv.Key] && e.Meta.Owner == r.owner {
				if err := tx.Delete(kv.Key); err != nil {
					return err
				}
			}
		}
		return nil
	})
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
	}
	o.GetMeta().Owner = r.owner
	return nil
}
