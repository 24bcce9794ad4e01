package agent

import (
	"net/netip"
	"slices"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/authz"
	"github.com/fogmesh/fogmesh/internal/balance"
	"github.com/fogmesh/fogmesh/internal/egress"
	"github.com/fogmesh/fogmesh/internal/outlier"
	"github.com/fogmesh/fogmesh/internal/paths"
	"github.com/fogmesh/fogmesh/internal/retry"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// Tier is a locality tier, nearest first.
type Tier int

const (
	TierNode Tier = iota
	TierSite
	TierRegion
	TierAny
)

func (t Tier) String() string {
	return [...]string{"node", "site", "region", "any"}[t]
}

// config is what the agent holds from the control plane: the last good
// snapshot plus deltas. It is what the cache file stores.
type config struct {
	StoreID   string          `json:"storeId"`
	Version   uint64          `json:"version"`
	Resources []wire.Resource `json:"resources"`
}

// resources is the decoded form of config.
type resources struct {
	// raw holds each resource as the control plane sent it ("Type/name"),
	// so the cache file is written from it without encoding every object
	// again at each update.
	raw       map[string]wire.Resource
	nodes     map[string]*api.Node
	services  map[string]*api.Service  // ns/name
	endpoints map[string]*api.Endpoint // ns/name
	routes    map[string]*api.Route    // ns/name
	policies  map[string]*api.DestinationPolicy
	sessions  map[string]*api.Session             // ns/name
	authz     map[string]*api.AuthorizationPolicy // ns/name
}

func newResources() *resources {
	return &resources{raw: map[string]wire.Resource{}, nodes: map[string]*api.Node{}, services: map[string]*api.Service{}, endpoints: map[string]*api.Endpoint{},
		routes: map[string]*api.Route{}, policies: map[string]*api.DestinationPolicy{}, sessions: map[string]*api.Session{},
		authz: map[string]*api.AuthorizationPolicy{}}
}

func (r *resources) put(o api.Object) {
	switch v := o.(type) {
	case *api.Node:
		r.nodes[v.Meta.Name] = v
	case *api.Service:
		r.services[v.Meta.Key()] = v
	case *api.Endpoint:
		r.endpoints[v.Meta.Key()] = v
	case *api.Route:
		r.routes[v.Meta.Key()] = v
	case *api.DestinationPolicy:
		r.policies[v.Meta.Key()] = v
	case *api.Session:
		r.sessions[v.Meta.Key()] = v
	case *api.AuthorizationPolicy:
		r.authz[v.Meta.Key()] = v
	}
}

func (r *resources) remove(ref wire.ResourceRef) {
	delete(r.raw, ref.Type+"/"+ref.Name)
	switch ref.Type {
	case api.KindNode:
		delete(r.nodes, ref.Name)
	case api.KindService:
		delete(r.services, ref.Name)
	case api.KindEndpoint:
		delete(r.endpoints, ref.Name)
	case api.KindRoute:
		delete(r.routes, ref.Name)
	case api.KindDestinationPolicy:
		delete(r.policies, ref.Name)
	case api.KindSession:
		delete(r.sessions, ref.Name)
	case api.KindAuthorizationPolicy:
		delete(r.authz, ref.Name)
	}
}

func (r *resources) clone() *resources {
	c := newResources()
	for k, v := range r.raw {
		c.raw[k] = v
	}
	for k, v := range r.nodes {
		c.nodes[k] = v
	}
	for k, v := range r.services {
		c.services[k] = v
	}
	for k, v := range r.endpoints {
		c.endpoints[k] = v
	}
	for k, v := range r.routes {
		c.routes[k] = v
	}
	for k, v := range r.policies {
		c.policies[k] = v
	}
	for k, v := range r.sessions {
		c.sessions[k] = v
	}
	for k, v := range r.authz {
		c.authz[k] = v
	}
	return c
}

// applyUpdate returns the resources after update m, or an error naming the
// first resource it cannot decode; the receiver is not changed.
func (r *resources) applyUpdate(m *wire.Message) (*resources, error) {
	next := newResources()
	if !m.Full {
		next = r.clone()
	}
	for _, ref := range m.Removed {
		next.remove(ref)
	}
	for _, res := range m.Resources {
		o, err := wire.DecodeResource(res)
		if err != nil {
			return nil, err
		}
		o.GetMeta().Version = res.Version
		next.put(o)
		next.raw[res.Type+"/"+res.Name] = res
	}
	return next, nil
}

// toConfig flattens resources for the cache file.
func (r *resources) toConfig(storeID string, version uint64) (*config, error) {
	c := &config{StoreID: storeID, Version: version}
	var objs []api.Object
	for _, v := range r.nodes {
		objs = append(objs, v)
	}
	for _, v := range r.services {
		objs = append(objs, v)
	}
	for _, v := range r.endpoints {
		objs = append(objs, v)
	}
	for _, v := range r.routes {
		objs = append(objs, v)
	}
	for _, v := range r.policies {
		objs = append(objs, v)
	}
	for _, v := range r.sessions {
		objs = append(objs, v)
	}
	for _, v := range r.authz {
		objs = append(objs, v)
	}
	c.Resources = make([]wire.Resource, 0, len(objs))
	for _, o := range objs {
		ref := wire.RefOf(o)
		if res, ok := r.raw[ref.Type+"/"+ref.Name]; ok && res.Version == o.GetMeta().Version {
			c.Resources = append(c.Resources, res) // as received: not encoded again
			continue
		}
		res, err := wire.NewResource(o)
		if err != nil {
			return nil, err
		}
		c.Resources = append(c.Resources, res)
	}
	sort.Slice(c.Resources, func(i, j int) bool {
		a, b := c.Resources[i], c.Resources[j]
		return a.Type < b.Type || a.Type == b.Type && a.Name < b.Name
	})
	return c, nil
}

// view is the routing table derived from resources and local workloads. It
// is immutable once built; the proxy and DNS read it without locks.
type view struct {
	services map[string]*serviceView // ns/name
	byVIP    map[netip.AddrPort]listenTarget
	// byClusterIP maps each captured ClusterIP:port (TCP ports of services
	// with a virtual IP) to the VIP:port of byVIP it stands for;
	// udpClusterIP the same for UDP ports.
	byClusterIP, udpClusterIP map[netip.AddrPort]netip.AddrPort
	// authz is the compiled AuthorizationPolicies (nil: none, allow all).
	authz *authz.Engine
	// authzInvalid: the policies that did not compile and fail closed
	// (compileAuthz).
	authzInvalid []error
	// ids maps local workload addresses to their SPIFFE IDs (vouch.go).
	ids map[netip.Addr]string
	// attest: local workload addresses -> the attest selectors declared
	// there; a client from such an address must match one (localid.go).
	attest map[netip.Addr][]*Attest
	// nodeIDs: node name -> the workload identities of its endpoints, which
	// that node's agent may claim as a stream's or request's source.
	nodeIDs map[string]map[string]bool
}

type listenTarget struct {
	svc   string // ns/name
	port  string // service port name
	proto string // the port's protocol
}

type serviceView struct {
	svc      *api.Service // with the destination policy's overrides applied
	route    *api.Route   // nil: all requests to all endpoints
	subsets  map[string]map[string]string
	sessions map[string]string // session key -> endpoint name, from the control plane
	// transports caches the L7 upstream pool per endpoint of this view
	// (l7.transportFor); a rebuilt view starts empty.
	transports sync.Map
	// egress holds the service's egress rules, compiled on first use (egress.go).
	egressOnce sync.Once
	egress     []egress.Rule
	// maglev caches lookup tables by endpoint set (balance.Maglev).
	maglev    balance.MaglevCache
	vip4      netip.Addr
	vip6      netip.Addr
	endpoints []*endpointView // sorted by tier

	// callerLabels: the labels of this node's workloads by identity, for
	// sourceLabels matches (routesource.go); set only when route has one.
	callerLabels map[string]map[string]string

	// dests: the views of the subsets and ports with traffic policies of
	// their own (effectivePolicy, policy.go); limitKey names the circuit
	// breaker's counters ("ns/name", or "ns/name|subset|port" for a
	// destination with its own), limitSubset the subset they count.
	dests       map[destKey]*serviceView
	limitKey    string
	limitSubset string
	// destKey names a destination view's outlier detector
	// ("ns/name|subset|port"; "" for the service's own view, whose
	// detector is "ns/name"), destSubset its subset (its detector's pool).
	destKey    string
	destSubset string
	// outlierDet: outlierKey's detector, set by syncOutliers (nil: by name)
	outlierDet atomic.Pointer[outlier.Detector]
	retryAcct  atomic.Pointer[retry.Account] // the service's retry budget account (retryAccount; nil: not yet)
	// base is the service before its DestinationPolicy (nil: none), what
	// a port's policy starts from (portPolicy).
	base *api.Service
}

type endpointView struct {
	key   string // ns/name
	ep    *api.Endpoint
	tier  Tier
	local bool   // on this node: dial directly
	mesh  string // peer agent's mesh address, for remote endpoints
	// capacity is the node's capacity × the endpoint's weight; distance is
	// to its node in 100 km (0 if either has no coordinates).
	capacity, distance float64
	// region is where the endpoint runs ("" when unknown), for egress
	// rules (egress.go) as is site.
	region string
	// healthy is the health known when the view was built: the local check,
	// or the owning agent's report and its node's readiness. Passive
	// ejections are applied at pick time.
	healthy bool
	site    string // the endpoint's node's site (metrics, egress rules)
	// peer is the remote endpoint's agent for the path manager, made at
	// its first dial (peerOf) and kept with this view.
	peer      atomic.Pointer[paths.Peer]
	epHandles // per-request handles resolved once per view (l7metrics.go)
}

// buildView derives the routing table. self is this node; local holds this
// node's workloads with their current health, and replaces whatever the
// control plane has for endpoints of this node (the agent is the authority
// on its own workloads, also while offline).
func buildView(self *api.Node, res *resources, local []api.Endpoint, vip4, vip6 netip.Prefix, td string) *view {
	v := &view{services: map[string]*serviceView{}, byVIP: map[netip.AddrPort]listenTarget{},
		byClusterIP: map[netip.AddrPort]netip.AddrPort{}, udpClusterIP: map[netip.AddrPort]netip.AddrPort{}}
	for key, s := range res.services {
		sv := &serviceView{svc: s, limitKey: key}
		// A headless service gets no virtual IP here, whatever index the
		// control plane gave it: DNS hands out its pods' addresses
		// (LookupService), so a VIP listener would serve no one.
		if s.Status.VIPIndex != 0 && !isHeadless(s) {
			sv.vip4 = api.VIPFor(vip4, s.Status.VIPIndex)
			if vip6.IsValid() {
				sv.vip6 = api.VIPFor(vip6, s.Status.VIPIndex)
			}
			for _, p := range s.Spec.Ports {
				lt := listenTarget{svc: key, port: p.Name, proto: p.Protocol}
				v.byVIP[netip.AddrPortFrom(sv.vip4, uint16(p.Port))] = lt
				if sv.vip6.IsValid() {
					v.byVIP[netip.AddrPortFrom(sv.vip6, uint16(p.Port))] = lt
				}
				captured := v.byClusterIP
				if p.Protocol == "udp" {
					captured = v.udpClusterIP
				}
				for _, ip := range s.ClusterAddrs() {
					captured[netip.AddrPortFrom(ip, uint16(p.Port))] = netip.AddrPortFrom(sv.vip4, uint16(p.Port))
				}
			}
		}
		v.services[key] = sv
	}
	add := func(e *api.Endpoint, isLocal bool) {
		sv := v.services[api.NamespaceOr(e.Meta.Namespace)+"/"+e.Spec.Service]
		if sv == nil {
			return
		}
		ev := &endpointView{key: e.Meta.Key(), ep: e, local: isLocal, healthy: e.Status.Healthy}
		weight := e.Spec.Weight
		if weight <= 0 {
			weight = 1
		}
		ev.capacity = weight * max(self.Spec.Capacity, 0)
		site, region := e.Spec.Site, e.Spec.Region
		switch {
		case isLocal:
			ev.tier = TierNode
		case e.Spec.Node != "":
			n := res.nodes[e.Spec.Node]
			if n == nil || n.Spec.MeshAddress == "" || !sv.svc.AllowsSite(n.Spec.Site) {
				return // cannot reach it, or its site may not run the service (stored before the service said so)
			}
			ev.mesh = n.Spec.MeshAddress
			ev.healthy = ev.healthy && n.Status.Ready
			site, region = n.Spec.Site, n.Spec.Region
			ev.capacity = weight * n.Spec.Capacity
			if c, s := n.Spec.Coordinates, self.Spec.Coordinates; c != nil && s != nil {
				ev.distance = balance.Haversine100km(s.Lat, s.Lon, c.Lat, c.Lon)
			}
		}
		if isLocal {
			site = self.Spec.Site
		}
		ev.site = site
		if ev.capacity <= 0 {
			ev.capacity = weight // static endpoints, nodes without capacity
		}
		if !isLocal {
			switch {
			case site != "" && site == self.Spec.Site && region == self.Spec.Region:
				ev.tier = TierSite
			case region != "" && region == self.Spec.Region:
				ev.tier = TierRegion
			default:
				ev.tier = TierAny
			}
		}
		ev.region = region
		sv.endpoints = append(sv.endpoints, ev)
	}
	local = slices.Clip(local) // appended to below: never into the caller's array
	for _, e := range res.endpoints {
		if e.Spec.Node == self.Meta.Name {
			// Replaced by local, except the pods a cluster runs on this
			// node (api.LabelSource): this agent dials them directly, with
			// the cluster's readiness as their health.
			if e.Meta.Labels[api.LabelSource] != "" {
				local = append(local, *e)
			}
			continue
		}
		add(e, false)
	}
	for i := range local {
		add(&local[i], true)
	}
	// Routes and destination policies: the newest (highest version) per
	// service wins when several name the same one.
	for _, r := range res.routes {
		sv := v.services[r.Meta.Namespace+"/"+r.Spec.Service]
		if sv != nil && (sv.route == nil || r.Meta.Version > sv.route.Meta.Version) {
			sv.route = r
		}
	}
	for _, ss := range res.sessions {
		sv := v.services[ss.Meta.Namespace+"/"+ss.Spec.Service]
		if sv == nil {
			continue
		}
		if sv.sessions == nil {
			sv.sessions = map[string]string{}
		}
		sv.sessions[ss.Spec.Key] = ss.Spec.Endpoint
	}
	newest := map[*serviceView]*api.DestinationPolicy{}
	for _, p := range res.policies {
		sv := v.services[p.Meta.Namespace+"/"+p.Spec.Service]
		if sv != nil && (newest[sv] == nil || p.Meta.Version > newest[sv].Meta.Version ||
			p.Meta.Version == newest[sv].Meta.Version && p.Meta.Name > newest[sv].Meta.Name) {
			newest[sv] = p
		}
	}
	for sv, p := range newest {
		sv.base, sv.svc = sv.svc, withPolicy(sv.svc, &p.Spec) // policy.go
		sv.subsets = map[string]map[string]string{}
		for _, ss := range p.Spec.Subsets {
			sv.subsets[ss.Name] = ss.Labels
		}
	}
	v.authz, v.authzInvalid = compileAuthz(res.authz)
	v.ids = localIdentities(td, local)
	setCallerLabels(v, td, local)
	v.nodeIDs = map[string]map[string]bool{}
	for _, e := range res.endpoints {
		if e.Spec.Node == "" {
			continue
		}
		// Only identities the endpoint's service allows, on a site it
		// allows (the control plane also checks agents' endpoints against
		// it, but only when they are registered).
		sv := v.services[api.NamespaceOr(e.Meta.Namespace)+"/"+e.Spec.Service]
		var site string
		if n := res.nodes[e.Spec.Node]; n != nil {
			site = n.Spec.Site
		}
		if sv == nil || !sv.svc.AllowsAccount(accountOf(e)) || !sv.svc.AllowsSite(site) {
			continue
		}
		if v.nodeIDs[e.Spec.Node] == nil {
			v.nodeIDs[e.Spec.Node] = map[string]bool{}
		}
		v.nodeIDs[e.Spec.Node][api.EndpointID(td, e)] = true
	}
	podIdentities(v, res, self.Meta.Name, td)
	for _, sv := range v.services {
		sort.Slice(sv.endpoints, func(i, j int) bool {
			a, b := sv.endpoints[i], sv.endpoints[j]
			return a.tier < b.tier || a.tier == b.tier && a.key < b.key
		})
	}
	for sv, p := range newest {
		sv.dests = destViews(sv, p) // with the endpoints complete
	}
	return v
}

// isHeadless reports whether s was mapped from a headless Kubernetes
// Service (api.LabelHeadless).
func isHeadless(s *api.Service) bool { return s.Meta.Labels[api.LabelHeadless] == "true" }

// accountOf is an endpoint's service account (default: its service).
func accountOf(e *api.Endpoint) string {
	if e.Spec.ServiceAccount != "" {
		return e.Spec.ServiceAccount
	}
	return e.Spec.Service
}

// podIdentities adds the pods a cluster source runs on each node
// (api.NodeSpec.Pods, set by the control plane from the cluster only): a
// node may vouch for its pods' accounts, and this node's agent knows a
// client connection from a pod's address as its account's identity. An
// address that a local endpoint or another pod names with another
// identity is unknown ("").
func podIdentities(v *view, res *resources, self, td string) {
	for name, n := range res.nodes {
		for _, p := range n.Spec.Pods {
			id := api.WorkloadID(td, p.Namespace, p.ServiceAccount)
			if v.nodeIDs[name] == nil {
				v.nodeIDs[name] = map[string]bool{}
			}
			v.nodeIDs[name][id] = true
			if name != self {
				continue
			}
			addr, err := netip.ParseAddr(p.Address)
			if err != nil {
				continue
			}
			addr = addr.Unmap()
			if old, ok := v.ids[addr]; ok && old != id {
				id = ""
			}
			v.ids[addr] = id
		}
	}
}
