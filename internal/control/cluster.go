package control

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/store"
)

// A cluster source (internal/kube) hands the control plane the whole
// state it maps from a Kubernetes API each time it changes: the objects
// (each labelled api.LabelSource) and the nodes' topology. The control
// plane writes what changed, deletes what the source no longer has, and
// reports rather than resolves a conflict with an applied object of the
// same key: the object there first stays.

// NodeTopology is a node's place from the cluster's labels; an empty
// field leaves what the agent registered.
type NodeTopology struct {
	Site   string `json:"site,omitempty"`
	Region string `json:"region,omitempty"`
	Zone   string `json:"zone,omitempty"`
	// Pods are the pods the cluster runs on the node (api.NodeSpec.Pods),
	// sorted by address.
	Pods []api.PodIdentity `json:"pods,omitempty"`
}

// ClusterState is everything a source maps from its cluster.
type ClusterState struct {
	// Source is the api.LabelSource value of the objects
	// (api.SourceKubernetes).
	Source  string
	Objects []api.Object
	Nodes   map[string]NodeTopology
	// Warnings are the bad input the source left out or kept its last
	// good state for, shown by `fogmesh get cluster`.
	Warnings []string
	// Link describes the source's link to its cluster ("" = fine).
	Link string
}

// ClusterStatus is what GET /v1/cluster answers.
type ClusterStatus struct {
	Source    string    `json:"source,omitempty"`
	Objects   int       `json:"objects"`
	Nodes     int       `json:"nodes"`
	LastSync  time.Time `json:"lastSync,omitzero"`
	Link      string    `json:"link,omitempty"`
	Conflicts []string  `json:"conflicts,omitempty"`
	Warnings  []string  `json:"warnings,omitempty"`
	// SiteMismatches are the nodes (secure mode) whose cluster labels
	// name another site than their certificates: they stay in the
	// certificate's site until they join again (certSiteLocked).
	SiteMismatches []string `json:"siteMismatches,omitempty"`
}

// clusterState is the last state synced (Server.cluster).
type clusterState struct {
	mu     sync.Mutex // serialises SyncCluster, and guards the following
	status ClusterStatus
	topo   map[string]NodeTopology
	seen   map[string]bool // conflicts already logged
	// mismatch: node → why it stays in its certificate's site although
	// its labels name another (secure mode; certSiteLocked).
	mismatch map[string]string
}

// ErrSourced is returned for a write that would replace an object kept by
// another source (api.LabelSource) than the writer's.
var ErrSourced = errors.New("kept by another source")

// sourceLocked refuses o when the stored object of its key comes from a
// different source (a cluster, or `fogmesh apply`).
func sourceLocked(key string, kv store.KV, o api.Object) error {
	var m struct {
		Meta api.Meta `json:"metadata"`
	}
	if json.Unmarshal(kv.Value, &m) != nil {
		return nil
	}
	had, want := m.Meta.Labels[api.LabelSource], o.GetMeta().Labels[api.LabelSource]
	if had == want {
		return nil
	}
	return fmt.Errorf("%s is %w: %s, not %s; change or delete it there first", key, ErrSourced, sourceName(had), sourceName(want))
}

func sourceName(s string) string {
	if s == "" {
		return "fogmesh apply"
	}
	return "the " + s + " source"
}

// SyncCluster makes the objects of st.Source equal st.Objects and
// applies the nodes' topology. It returns the conflicts it left
// unresolved; an error is the store's.
func (s *Server) SyncCluster(st ClusterState) ([]string, error) {
	c := &s.cluster
	c.mu.Lock()
	defer c.mu.Unlock()
	m := s.cfg.Metrics
	m.GetOrCreateCounter(`fogmesh_control_cluster_syncs_total`).Inc()
	stored, _, err := s.reg.list("")
	if err != nil {
		return nil, fmt.Errorf("cluster sync: %w", err)
	}
	have := make(map[string]api.Object, len(stored))
	for _, o := range stored {
		have[api.ObjectKey(o)] = o
	}
	var conflicts []string
	want := map[string]bool{}
	var put []api.Object
	for _, o := range st.Objects {
		key := api.ObjectKey(o)
		if want[key] {
			conflicts = append(conflicts, fmt.Sprintf("%s: two objects of the cluster map to it; the first is used", key))
			continue
		}
		want[key] = true
		old := have[key]
		if old != nil && !api.FromSource(*old.GetMeta(), st.Source) {
			conflicts = append(conflicts, fmt.Sprintf("%s: applied with fogmesh apply and also in the cluster; the applied one is used until it is deleted", key))
			continue
		}
		if old != nil && same(o, old, s.reg.owner) {
			continue
		}
		put = append(put, o)
	}
	if len(put) > 0 {
		if _, err := s.reg.apply(put); err != nil {
			if errors.Is(err, store.ErrUnavailable) {
				return nil, fmt.Errorf("cluster sync: %w", err)
			}
			// One by one: one bad object (applied meanwhile, owned by a
			// region, no free virtual IP) does not hold back the rest.
			for _, o := range put {
				if _, err := s.reg.apply([]api.Object{o}); err != nil {
					conflicts = append(conflicts, fmt.Sprintf("%s: %v", api.ObjectKey(o), err))
				}
			}
		}
	}
	for key, o := range have {
		if want[key] || !api.FromSource(*o.GetMeta(), st.Source) {
			continue
		}
		md := o.GetMeta()
		if _, err := s.deleteObj(o.GetKind(), md.Namespace, md.Name); err != nil && !errors.Is(err, ErrNotFound) {
			conflicts = append(conflicts, fmt.Sprintf("%s: not deleted: %v", key, err))
		}
	}
	if err := s.applyTopology(st.Nodes, have); err != nil {
		return nil, err
	}
	sort.Strings(conflicts)
	if c.seen == nil {
		c.seen = map[string]bool{}
	}
	now := map[string]bool{}
	for _, x := range conflicts {
		now[x] = true
		if !c.seen[x] {
			s.log.Warn("control: cluster conflict", "source", st.Source, "conflict", x)
			m.GetOrCreateCounter(`fogmesh_control_cluster_conflicts_total`).Inc()
		}
	}
	c.seen = now
	c.topo = st.Nodes
	c.status = ClusterStatus{Source: st.Source, Objects: len(st.Objects), Nodes: len(st.Nodes), LastSync: time.Now(),
		Link: st.Link, Conflicts: conflicts, Warnings: slices.Clone(st.Warnings)}
	m.GetOrCreateGauge(`fogmesh_control_cluster_conflicts`, nil).Set(float64(len(conflicts)))
	m.GetOrCreateGauge(`fogmesh_control_cluster_objects`, nil).Set(float64(len(st.Objects)))
	return conflicts, nil
}

// SetClusterLink records the state of the source's link (shown by
// `fogmesh get cluster`) without a sync.
func (s *Server) SetClusterLink(link string) {
	s.cluster.mu.Lock()
	s.cluster.status.Link = link
	s.cluster.mu.Unlock()
}

// ClusterStatus is the last cluster sync's outcome.
func (s *Server) ClusterStatus() ClusterStatus {
	s.cluster.mu.Lock()
	defer s.cluster.mu.Unlock()
	st := s.cluster.status
	st.Conflicts = slices.Clone(st.Conflicts)
	st.Warnings = slices.Clone(st.Warnings)
	for _, m := range s.cluster.mismatch {
		st.SiteMismatches = append(st.SiteMismatches, m)
	}
	sort.Strings(st.SiteMismatches)
	return st
}

// same reports whether o would be stored as old is (putLocked would
// write nothing): the store's own fields (version, owner, a service's
// virtual IP) taken from old.
func same(o, old api.Object, owner string) bool {
	md := o.GetMeta()
	md.Owner = owner
	md.Version = 0
	if sv, ok := o.(*api.Service); ok {
		sv.Status = old.(*api.Service).Status
	}
	a, err1 := json.Marshal(o)
	ov := old.GetMeta().Version
	old.GetMeta().Version = 0
	b, err2 := json.Marshal(old)
	old.GetMeta().Version = ov
	return err1 == nil && err2 == nil && bytes.Equal(a, b)
}

// topology overrides the site, region and zone an agent registers with
// its node's from the cluster, and reports a difference. certified: the
// agent's site is the one its certificate names (secure mode), which
// labels cannot change (certSiteLocked).
//
// A node's pods (api.NodeSpec.Pods) come from the cluster only: whatever
// the agent registered there is dropped (a node naming pods could vouch
// for any identity).
func (s *Server) topology(n *api.Node, certified bool) {
	n.Spec.Pods = nil
	s.cluster.mu.Lock()
	t, ok := s.cluster.topo[n.Meta.Name]
	if ok && certified {
		t = s.certSiteLocked(n.Meta.Name, n.Spec.Site, t)
	}
	s.cluster.mu.Unlock()
	if !ok {
		return
	}
	n.Spec.Pods = t.Pods
	if d := placeDiff(n, t); d != "" {
		s.log.Warn("control: node registers another place than its cluster labels; the labels are used", "node", n.Meta.Name, "diff", d)
		s.cfg.Metrics.GetOrCreateCounter(`fogmesh_control_cluster_node_place_overrides_total`).Inc()
		place(n, t)
	}
}

// certSiteLocked returns t without its site when the labels place node
// in another site than certSite, the site its certificate names, and
// records the mismatch (logged and counted once, shown by get cluster).
// A node's certificate is its identity on every mesh connection
// (spiffe://TD/site/SITE/node/NAME): peers dial it under the site the
// registry shows, and revoking it deny-lists that ID, so the registry
// must show the certificate's site. It moves when its agent joins again
// with a token of the labelled site (checkNodeSite lets it). Caller
// holds s.cluster.mu.
func (s *Server) certSiteLocked(node, certSite string, t NodeTopology) NodeTopology {
	c := &s.cluster
	if t.Site == "" || t.Site == certSite {
		if _, had := c.mismatch[node]; had {
			delete(c.mismatch, node)
			s.log.Info("control: node's cluster labels and certificate name the same site again", "node", node, "site", certSite)
		}
		s.cfg.Metrics.GetOrCreateGauge(`fogmesh_control_cluster_node_site_mismatches`, nil).Set(float64(len(c.mismatch)))
		return t
	}
	msg := fmt.Sprintf("node %s: its labels place it in site %s, its certificate names site %s; it stays in %s until its agent runs with -site %s and joins again with a token of %s (fogmesh token create -site %s)",
		node, t.Site, certSite, certSite, t.Site, t.Site, t.Site)
	if c.mismatch == nil {
		c.mismatch = map[string]string{}
	}
	if c.mismatch[node] != msg {
		c.mismatch[node] = msg
		s.log.Warn("control: node's cluster labels name another site than its certificate; it stays in the certificate's site",
			"node", node, "labels", t.Site, "certificate", certSite)
		s.cfg.Metrics.GetOrCreateCounter(`fogmesh_control_cluster_node_site_mismatches_total`).Inc()
	}
	s.cfg.Metrics.GetOrCreateGauge(`fogmesh_control_cluster_node_site_mismatches`, nil).Set(float64(len(c.mismatch)))
	t.Site = ""
	return t
}

// clusterSite is the site the cluster's labels give node ("" if none).
func (s *Server) clusterSite(node string) string {
	s.cluster.mu.Lock()
	defer s.cluster.mu.Unlock()
	return s.cluster.topo[node].Site
}

// clusterRegion is the region the cluster's labels give node ("" if
// none).
func (s *Server) clusterRegion(node string) string {
	s.cluster.mu.Lock()
	defer s.cluster.mu.Unlock()
	return s.cluster.topo[node].Region
}

// placeDiff describes where n's place differs from t's set fields.
func placeDiff(n *api.Node, t NodeTopology) string {
	var d []string
	for _, f := range []struct{ name, have, want string }{
		{"site", n.Spec.Site, t.Site}, {"region", n.Spec.Region, t.Region}, {"zone", n.Spec.Zone, t.Zone}} {
		if f.want != "" && f.have != f.want {
			d = append(d, fmt.Sprintf("%s %q → %q", f.name, f.have, f.want))
		}
	}
	return strings.Join(d, ", ")
}

func place(n *api.Node, t NodeTopology) {
	if t.Site != "" {
		n.Spec.Site = t.Site
	}
	if t.Region != "" {
		n.Spec.Region = t.Region
	}
	if t.Zone != "" {
		n.Spec.Zone = t.Zone
	}
}

// applyTopology moves the stored nodes the cluster places elsewhere. In
// secure mode a stored node's site is its certificate's (checkNodeSite
// admits no other), which labels do not change (certSiteLocked). Caller
// holds s.cluster.mu.
func (s *Server) applyTopology(topo map[string]NodeTopology, have map[string]api.Object) error {
	secure := s.sec != nil
	for name := range s.cluster.mismatch {
		if _, ok := have[api.KindNode+"/"+name]; !ok || topo[name].Site == "" {
			delete(s.cluster.mismatch, name) // deleted, or no site label any more
		}
	}
	for key, o := range have {
		// A node the cluster no longer has keeps no pods.
		n, ok := o.(*api.Node)
		if !ok || len(n.Spec.Pods) == 0 || n.Meta.Owner != s.reg.owner {
			continue
		}
		if _, inCluster := topo[n.Meta.Name]; inCluster {
			continue
		}
		if _, err := s.st.Update(func(tx *store.Tx) error {
			n, ok := getLocked(tx, key, new(api.Node))
			if !ok || n.Meta.Owner != s.reg.owner {
				return nil
			}
			n.Spec.Pods = nil
			return putLocked(tx, n)
		}); err != nil {
			return fmt.Errorf("cluster sync: node %s: %w", n.Meta.Name, err)
		}
	}
	for name, t := range topo {
		o, ok := have[api.KindNode+"/"+name]
		if !ok {
			continue // no agent registered it yet: registerNode places it
		}
		if secure {
			t = s.certSiteLocked(name, o.(*api.Node).Spec.Site, t)
		}
		diff := placeDiff(o.(*api.Node), t)
		if diff == "" && slices.Equal(o.(*api.Node).Spec.Pods, t.Pods) {
			continue
		}
		_, err := s.st.Update(func(tx *store.Tx) error {
			n, ok := getLocked(tx, api.KindNode+"/"+name, new(api.Node))
			if !ok || n.Meta.Owner != s.reg.owner {
				return nil
			}
			place(n, t)
			n.Spec.Pods = t.Pods
			return putLocked(tx, n)
		})
		if err != nil {
			return fmt.Errorf("cluster sync: node %s: %w", name, err)
		}
		if diff != "" {
			s.log.Info("control: node placed by its cluster labels", "node", name, "site", t.Site, "region", t.Region, "zone", t.Zone)
		}
	}
	s.cfg.Metrics.GetOrCreateGauge(`fogmesh_control_cluster_node_site_mismatches`, nil).Set(float64(len(s.cluster.mismatch)))
	return nil
}

func (s *Server) handleCluster(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.ClusterStatus())
}
