package agent

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// applyCostFixture is a configuration of 100 nodes, 50 services and 500
// endpoints, as the control plane sends it, and a one-endpoint delta.
func applyCostFixture(tb testing.TB) (*resources, func(i int) *wire.Message) {
	tb.Helper()
	res := func(o api.Object) wire.Resource {
		o.GetMeta().Version = 1
		r, err := wire.NewResource(o)
		if err != nil {
			tb.Fatal(err)
		}
		return r
	}
	snap := &wire.Message{Type: wire.TypeUpdate, Full: true, Version: 1}
	for i := range 100 {
		snap.Resources = append(snap.Resources, res(&api.Node{APIVersion: api.APIVersion, Kind: api.KindNode, Meta: api.Meta{Name: fmt.Sprintf("n%d", i)},
			Spec: api.NodeSpec{Site: "s", Region: "r", MeshAddress: "127.0.0.1:7000"}}))
	}
	for i := range 50 {
		snap.Resources = append(snap.Resources, res(&api.Service{APIVersion: api.APIVersion, Kind: api.KindService, Meta: api.Meta{Namespace: "demo", Name: fmt.Sprintf("s%d", i)},
			Spec: api.ServiceSpec{Ports: []api.ServicePort{{Name: "http", Port: 80}}}, Status: api.ServiceStatus{VIPIndex: uint32(i + 1)}}))
	}
	ep := func(i, port int) *api.Endpoint {
		return &api.Endpoint{APIVersion: api.APIVersion, Kind: api.KindEndpoint, Meta: api.Meta{Namespace: "demo", Name: fmt.Sprintf("e%d", i)},
			Spec: api.EndpointSpec{Service: fmt.Sprintf("s%d", i%50), Node: fmt.Sprintf("n%d", i%100), Address: "10.0.0.1", Ports: []api.EndpointPort{{Name: "http", Port: port}}}}
	}
	for i := range 500 {
		snap.Resources = append(snap.Resources, res(ep(i, 8000)))
	}
	r, err := newResources().applyUpdate(snap)
	if err != nil {
		tb.Fatal(err)
	}
	return r, func(i int) *wire.Message {
		return &wire.Message{Type: wire.TypeUpdate, Version: uint64(i + 2), Resources: []wire.Resource{res(ep(i%500, 9000+i%1000))}}
	}
}

// BenchmarkApplyDelta is the agent's work for a one-endpoint delta in a
// configuration of 650 resources: the new resources, the cache file
// (encoded and written), and the view.
func BenchmarkApplyDelta(b *testing.B) {
	cur, delta := applyCostFixture(b)
	path := filepath.Join(b.TempDir(), "cache.json")
	self := &api.Node{Meta: api.Meta{Name: "n0"}, Spec: api.NodeSpec{Site: "s", Region: "r"}}
	vip := netip.MustParsePrefix("127.102.0.0/16")
	b.ResetTimer()
	for i := range b.N {
		next, err := cur.applyUpdate(delta(i))
		if err != nil {
			b.Fatal(err)
		}
		c, err := next.toConfig("s", uint64(i+2))
		if err != nil {
			b.Fatal(err)
		}
		if err := saveConfig(path, c); err != nil {
			b.Fatal(err)
		}
		buildView(self, next, nil, vip, netip.Prefix{}, "td")
		cur = next
	}
}

// The cache written after a delta holds the resources as received (not
// encoded again) and loads back to the same configuration.
func TestCacheKeepsResourcesAsReceived(t *testing.T) {
	cur, delta := applyCostFixture(t)
	m := delta(7)
	// A body as the control plane may encode it (key order, spacing) is
	// kept byte for byte: the agent does not encode what it received.
	m.Resources[0].Body = json.RawMessage(" " + string(m.Resources[0].Body))
	next, err := cur.applyUpdate(m)
	if err != nil {
		t.Fatal(err)
	}
	c, err := next.toConfig("s", 9)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range c.Resources {
		if r.ResourceRef == m.Resources[0].ResourceRef {
			found = string(r.Body) == string(m.Resources[0].Body)
		}
	}
	if !found || len(c.Resources) != 650 {
		t.Fatalf("cache has %d resources; the delta's body kept as received: %v", len(c.Resources), found)
	}
	path := filepath.Join(t.TempDir(), "cache.json")
	if err := saveConfig(path, c); err != nil {
		t.Fatal(err)
	}
	_, loaded, err := loadCache(path)
	if err != nil {
		t.Fatal(err)
	}
	if e := loaded.endpoints["demo/e7"]; e == nil || e.Spec.Ports[0].Port != 9007 || e.Meta.Version != 1 {
		t.Fatalf("loaded e7 = %+v", e)
	}
	if len(loaded.nodes) != 100 || len(loaded.services) != 50 || len(loaded.endpoints) != 500 {
		t.Fatalf("loaded %d nodes %d services %d endpoints", len(loaded.nodes), len(loaded.services), len(loaded.endpoints))
	}
}
