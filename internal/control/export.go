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

// regionView selects, from every object the global control plane holds,
// what region's control plane receives:
//   - objects the global plane owns, all of them;
//   - none of region's own objects (it is their source);
//   - of another region's objects: services exported to region, the
//     endpoints of services (of any owner) exported to region, and the nodes
//     those endpoints run on. That region's routes, policies and sessions
//     stay in it.
func regionView(objs []api.Object, region string) []api.Object {
	exported := map[string]bool{} // service key "ns/name" -> exported to region
	for _, o := range objs {
		if s, ok := o.(*api.Service); ok && s.ExportedTo(region) {
			exported[s.Meta.Key()] = true
		}
	}
	hosts := map[string]bool{} // nodes of exported endpoints
	var out []api.Object
	for _, o := range objs {
		if e, ok := o.(*api.Endpoint); ok && e.Meta.Owner != "" && e.Meta.Owner != region &&
			exported[api.NamespaceOr(e.Meta.Namespace)+"/"+e.Spec.Service] {
			out = append(out, e)
			if e.Spec.Node != "" {
				hosts[e.Spec.Node] = true
			}
		}
	}
	for _, o := range objs {
		m := o.GetMeta()
		switch {
		case m.Owner == region:
		case m.Owner == "":
			out = append(out, o)
		case o.GetKind() == api.KindService && exported[m.Key()]:
			out = append(out, o)
		case o.GetKind() == api.KindNode && hosts[m.Name]:
			out = append(out, o)
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
