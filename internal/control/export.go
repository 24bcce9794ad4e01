// The rules of the hierarchy without its I/O: which objects a region's
// control plane receives from the global one (regionView), and how an
// update on a region link is checked before it touches the store
// (decodeReplicaUpdate). docs/regions.md states them for operators.

package control

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/syncproto"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// regionRE is api's DNS-label rule for names, which regions follow.
var regionRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// validateHierarchy checks Mode, Region, Upstreams and the VIP index block
// of a control plane whose VIP range is vip.
func (c *Config) validateHierarchy(vip netip.Prefix) error {
	switch c.Mode {
	case "", ModeGlobal:
		c.Mode = ModeGlobal
		if c.Region != "" || len(c.Upstreams) > 0 || c.RegionJoinToken != "" {
			return errors.New("control: region, upstreams and a region join token are for mode regional")
		}
	case ModeRegional:
		if !regionRE.MatchString(c.Region) {
			return fmt.Errorf("control: mode regional: region %q is not a DNS label", c.Region)
		}
		if len(c.Upstreams) == 0 {
			return errors.New("control: mode regional needs at least one upstream (the global control plane's sync address)")
		}
		for _, u := range c.Upstreams {
			if _, _, err := net.SplitHostPort(u); err != nil {
				return fmt.Errorf("control: upstream %q: %w", u, err)
			}
		}
		// Secure (the default): the CA is an intermediate of the global
		// plane and the link carries the region's certificate. Insecure:
		// replication only, in plaintext, for tests and closed labs.
		if c.Insecure && c.RegionJoinToken != "" {
			return errors.New("control: an insecure regional control plane has no CA: no region join token")
		}
		if !c.Insecure && c.CACertFile != "" {
			return errors.New("control: a regional control plane's CA comes from its upstream: no --ca-cert")
		}
	default:
		return fmt.Errorf("control: mode %q is not %s or %s", c.Mode, ModeGlobal, ModeRegional)
	}
	limit := uint64(1)<<(32-vip.Bits()) - 2
	if c.VIPIndexMax != 0 && (c.VIPIndexMin > c.VIPIndexMax || uint64(c.VIPIndexMax) > limit) {
		return fmt.Errorf("control: vip indexes %d-%d are not within 1-%d of %s", c.VIPIndexMin, c.VIPIndexMax, limit, vip)
	}
	return nil
}

// admitRegion refuses an agent of another region at a regional control
// plane: it serves its own region's agents, whose nodes it owns.
func (s *Server) admitRegion(n *api.Node) error {
	if s.cfg.Mode == ModeRegional && n.Spec.Region != s.cfg.Region {
		return fmt.Errorf("node %s is in region %s; this control plane serves region %s", n.Meta.Name, n.Spec.Region, s.cfg.Region)
	}
	return nil
}

// regionRule is the hierarchy's one rule of what a region sees of the
// objects a global control plane holds, one object at a time. Both a
// regional plane's link (regionView, viewState) and the global plane's own
// agents (agentGate, agentview.go) decide with it.
type regionRule struct {
	region string
	// own: the region's own objects are in the view. An agent of the
	// region has them; the region's control plane does not get them back
	// (it is their source).
	own bool
}

// verdict is regionRule's answer for one object.
type verdict int

const (
	viewOut verdict = iota
	// viewIn: an object of the global plane (or of the region itself).
	viewIn
	// viewExported: another region's object in the view: a service
	// exported to the region, an endpoint of a service (of any owner)
	// exported to it. Such an endpoint brings its node with it.
	viewExported
	// viewIfHosted: a node of another region, in the view while an
	// endpoint in it (viewExported) runs there.
	viewIfHosted
)

// of tells o's verdict; exported says whether the service "ns/name" is
// exported to the region. That region's other objects (routes, policies,
// sessions) stay in it.
func (r regionRule) of(o api.Object, exported func(svc string) bool) verdict {
	m := o.GetMeta()
	switch {
	case m.Owner == "":
		return viewIn
	case m.Owner == r.region:
		if r.own {
			return viewIn
		}
		return viewOut
	}
	switch v := o.(type) {
	case *api.Service:
		if v.ExportedTo(r.region) {
			return viewExported
		}
	case *api.Endpoint:
		if exported(api.NamespaceOr(v.Meta.Namespace) + "/" + v.Spec.Service) {
			return viewExported
		}
	case *api.Node:
		return viewIfHosted
	}
	return viewOut
}

// regionView selects, from every object the global control plane holds,
// what region's control plane receives (regionRule without own): the
// objects the global plane owns, none of region's own, and of another
// region's objects the services exported to region, the endpoints of
// services exported to region, and the nodes those endpoints run on.
func regionView(objs []api.Object, region string) []api.Object {
	return regionRule{region: region}.view(objs)
}

// view applies the rule to a whole store's objects.
func (r regionRule) view(objs []api.Object) []api.Object {
	exported := map[string]bool{} // service key "ns/name" -> exported to the region
	for _, o := range objs {
		if s, ok := o.(*api.Service); ok && s.ExportedTo(r.region) {
			exported[s.Meta.Key()] = true
		}
	}
	isExported := func(svc string) bool { return exported[svc] }
	hosts := map[string]bool{} // nodes of exported endpoints
	var out []api.Object
	for _, o := range objs {
		if e, ok := o.(*api.Endpoint); ok && r.of(o, isExported) == viewExported {
			out = append(out, e)
			if e.Spec.Node != "" {
				hosts[e.Spec.Node] = true
			}
		}
	}
	for _, o := range objs {
		switch r.of(o, isExported) {
		case viewIn:
			out = append(out, o)
		case viewExported:
			if o.GetKind() != api.KindEndpoint { // added above
				out = append(out, o)
			}
		case viewIfHosted:
			if hosts[o.GetMeta().Name] {
				out = append(out, o)
			}
		}
	}
	return out
}

// storeKey is the store key of a resource reference.
func storeKey(r wire.ResourceRef) string { return r.Type + "/" + r.Name }

// replicaUpdate is an update frame from the other end of a region link,
// decoded and checked.
type replicaUpdate struct {
	full    bool
	version uint64
	puts    []api.Object // Meta.Version is the sender's
	removed []string     // store keys
}

// maxRefName bounds a removed resource's name: a namespace and a name,
// each a DNS label.
const maxRefName = 2*63 + 1

// decodeReplicaUpdate checks an update frame from a region link before any
// of it is applied: every resource decodes and validates and names itself,
// none appears twice, every removed reference is a known type with a sane
// name, and ownerOK accepts each resource's owner. Any failure refuses the
// whole update, so a bad frame never leaves half a change behind.
func decodeReplicaUpdate(m *wire.Message, ownerOK func(owner string) error) (*replicaUpdate, error) {
	if m == nil || m.Type != wire.TypeUpdate {
		return nil, errors.New("not an update")
	}
	if m.Chunk != 0 || m.Chunks != 0 {
		return nil, errors.New("a chunk of an update: chunks are assembled before the update is checked")
	}
	if m.Version == 0 {
		return nil, errors.New("update without a version")
	}
	u := &replicaUpdate{full: m.Full, version: m.Version}
	seen := map[string]bool{}
	for _, r := range m.Resources {
		if !slices.Contains(syncproto.AllTypes, r.Type) {
			return nil, fmt.Errorf("resource type %q is not replicated", r.Type)
		}
		o, err := wire.DecodeResource(r)
		if err != nil {
			return nil, err
		}
		key := api.ObjectKey(o)
		if seen[key] {
			return nil, fmt.Errorf("resource %s appears twice", key)
		}
		seen[key] = true
		if err := ownerOK(o.GetMeta().Owner); err != nil {
			return nil, fmt.Errorf("resource %s: %w", key, err)
		}
		o.GetMeta().Version = r.Version
		u.puts = append(u.puts, o)
	}
	if m.Full && len(m.Removed) > 0 {
		return nil, errors.New("a full update removes nothing: it replaces")
	}
	for _, r := range m.Removed {
		if !slices.Contains(syncproto.AllTypes, r.Type) {
			return nil, fmt.Errorf("removed type %q is not replicated", r.Type)
		}
		ns, name, hasNS := strings.Cut(r.Name, "/")
		bad := r.Name == "" || len(r.Name) > maxRefName || !regionRE.MatchString(ns) ||
			hasNS == (r.Type == api.KindNode) || hasNS && !regionRE.MatchString(name)
		if bad {
			return nil, fmt.Errorf("removed %s %q is not a valid name", r.Type, r.Name)
		}
		key := storeKey(r)
		if seen[key] {
			return nil, fmt.Errorf("resource %s is both changed and removed", key)
		}
		seen[key] = true
		u.removed = append(u.removed, key)
	}
	return u, nil
}
