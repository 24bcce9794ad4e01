package control

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/store"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// TestViewStateFollowsRegionView: after every one of many random commits
// (services exported or not, nodes, endpoints of every owner changing
// health, coming and going, sessions), the updates viewState produces
// bring a region from what it held to exactly regionView of the store,
// and most commits are folded in without a pass over the whole store.
func TestViewStateFollowsRegionView(t *testing.T) {
	for _, seed := range []uint64{1, 5, 13} {
		t.Run(fmt.Sprint("seed ", seed), func(t *testing.T) { viewStateSteps(t, seed) })
	}
}

func viewStateSteps(t *testing.T, seed uint64) {
	// No node times out during the test: the store changes only here.
	s := startPlane(t, func(c *Config) { c.NodeTimeout = time.Hour })
	rng := rand.New(rand.NewPCG(seed, 7))
	owners := []string{"", "east", "north", "west"}
	pick := func(xs []string) string { return xs[rng.IntN(len(xs))] }
	exports := [][]string{nil, {"west"}, {api.ExportAll}, {"north"}}
	put := func(o api.Object) {
		if err := validate(o); err != nil {
			t.Fatalf("test object %s: %v", api.ObjectKey(o), err)
		}
		if _, err := s.st.Update(func(tx *store.Tx) error { return putLocked(tx, o) }); err != nil {
			t.Fatal(err)
		}
	}
	svc := func() {
		put(&api.Service{Meta: api.Meta{Name: fmt.Sprintf("svc%d", rng.IntN(4)), Namespace: "demo", Owner: pick(owners)},
			Spec: api.ServiceSpec{Ports: []api.ServicePort{{Name: "tcp", Port: 80}}, Export: exports[rng.IntN(len(exports))]}})
	}
	node := func() {
		put(&api.Node{Meta: api.Meta{Name: fmt.Sprintf("n%d", rng.IntN(5)), Owner: pick(owners)},
			Spec: api.NodeSpec{Site: "s", Region: "r", MeshAddress: "127.0.0.1:7072"}, Status: api.NodeStatus{Ready: rng.IntN(2) == 0}})
	}
	endpoint := func() {
		put(&api.Endpoint{Meta: api.Meta{Name: fmt.Sprintf("ep%d", rng.IntN(10)), Namespace: "demo", Owner: pick(owners)},
			Spec: api.EndpointSpec{Service: fmt.Sprintf("svc%d", rng.IntN(4)), Node: fmt.Sprintf("n%d", rng.IntN(5)), Address: "127.0.0.1",
				Ports: []api.EndpointPort{{Name: "tcp", Port: 9000}}}, Status: api.EndpointStatus{Healthy: rng.IntN(2) == 0}})
	}
	// health flips an existing endpoint's status, the common commit.
	health := func() {
		objs, _, _ := s.reg.list(api.KindEndpoint)
		if len(objs) == 0 {
			endpoint()
			return
		}
		e := objs[rng.IntN(len(objs))].(*api.Endpoint)
		e.Status.Healthy = !e.Status.Healthy
		put(e)
	}
	session := func() {
		put(&api.Session{Meta: api.Meta{Namespace: "demo", Owner: pick(owners)},
			Spec: api.SessionSpec{Service: "svc0", Key: fmt.Sprint(rng.IntN(3)), Endpoint: fmt.Sprintf("ep%d", rng.IntN(10))}})
	}
	del := func() {
		objs, _, _ := s.reg.list("")
		if len(objs) == 0 {
			return
		}
		key := api.ObjectKey(objs[rng.IntN(len(objs))])
		if _, err := s.st.Update(func(tx *store.Tx) error { return tx.Delete(key) }); err != nil {
			t.Fatal(err)
		}
	}
	for range 20 {
		svc()
		node()
		endpoint()
	}

	const steps = 200
	vs := newViewState(s, "west", nil)
	region := map[string]uint64{} // what west holds
	take := func(m *wire.Message) {
		if m == nil {
			return
		}
		if m.Full {
			clear(region)
		}
		for _, r := range m.Resources {
			region[storeKey(r.ResourceRef)] = r.Version
		}
		for _, r := range m.Removed {
			if _, ok := region[storeKey(r)]; !ok {
				t.Fatalf("removed %s, which the region does not hold", storeKey(r))
			}
			delete(region, storeKey(r))
		}
	}
	m, err := vs.next(true)
	if err != nil {
		t.Fatal(err)
	}
	take(m)
	for i := range steps {
		switch r := rng.IntN(20); {
		case r < 10:
			health()
		case r < 14:
			endpoint()
		case r < 16:
			session()
		case r < 17:
			svc()
		case r < 18:
			node()
		default:
			del()
		}
		m, err := vs.next(false)
		if err != nil {
			t.Fatal(err)
		}
		take(m)
		objs, _, _ := s.reg.list("")
		want := map[string]uint64{}
		for _, o := range regionView(objs, "west") {
			want[api.ObjectKey(o)] = o.GetMeta().Version
		}
		if !maps.Equal(region, want) {
			t.Fatalf("step %d: west holds %v\nwant %v", i, region, want)
		}
	}
	if vs.recomputes > steps/2 {
		t.Fatalf("%d of %d commits recomputed the whole view", vs.recomputes, steps)
	}
	t.Logf("%d of %d commits recomputed the whole view", vs.recomputes, steps)
}

func validate(o api.Object) error {
	v, ok := o.(interface{ Validate() error })
	if !ok {
		return fmt.Errorf("%T has no Validate", o)
	}
	return v.Validate()
}
