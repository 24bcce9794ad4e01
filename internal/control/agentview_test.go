package control

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/store"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// TestGlobalAgentFollowsRegionRule: an agent of region west connected to
// the global plane holds, after every one of many random commits (objects
// of the global plane, of west and of other regions; exports changing;
// endpoints moving, coming and going), exactly what regionRule with its
// own region decides of the store: the rule a region's link uses, with
// west's own objects in.
func TestGlobalAgentFollowsRegionRule(t *testing.T) {
	for _, seed := range []uint64{2, 9} {
		t.Run(fmt.Sprint("seed ", seed), func(t *testing.T) { globalAgentSteps(t, seed) })
	}
}

func globalAgentSteps(t *testing.T, seed uint64) {
	s := startPlane(t, func(c *Config) { c.NodeTimeout = time.Hour })
	rng := rand.New(rand.NewPCG(seed, 11))
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
			Spec: api.SessionSpec{Service: fmt.Sprintf("svc%d", rng.IntN(4)), Key: fmt.Sprint(rng.IntN(3)), Endpoint: fmt.Sprintf("ep%d", rng.IntN(10))}})
	}
	del := func() {
		objs, _, _ := s.reg.list("")
		if len(objs) == 0 {
			return
		}
		key := api.ObjectKey(objs[rng.IntN(len(objs))])
		if key == "Node/w1" {
			return
		}
		if _, err := s.st.Update(func(tx *store.Tx) error { return tx.Delete(key) }); err != nil {
			t.Fatal(err)
		}
	}
	for range 20 {
		svc()
		node()
		endpoint()
	}

	c, err := net.Dial("tcp", s.SyncAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	a := &agentConn{t: t, c: c, r: wire.NewReader(c)}
	a.send(&wire.Message{Type: wire.TypeHello, Protocol: wire.ProtocolVersion, Capabilities: []string{wire.CapPolicy2}, Node: &api.Node{
		Meta: api.Meta{Name: "w1"}, Spec: api.NodeSpec{Site: "s1", Region: "west", MeshAddress: "127.0.0.1:7072"}}})
	if m := a.recv(); m.Type != wire.TypeWelcome {
		t.Fatalf("want welcome, got %+v", m)
	}
	a.send(&wire.Message{Type: wire.TypeSubscribe})
	holds := map[string]uint64{}
	var seen uint64 // the version of the last update
	take := func(m *wire.Message) {
		if m.Full {
			clear(holds)
		}
		for _, r := range m.Resources {
			holds[storeKey(r.ResourceRef)] = r.Version
		}
		for _, r := range m.Removed {
			delete(holds, storeKey(r))
		}
	}
	check := func(step int) {
		t.Helper()
		a.send(&wire.Message{Type: wire.TypeHeartbeat}) // the stream must not time out
		if rev, _ := s.st.Rev(); rev > seen {
			for _, m := range a.recvUntil(rev) {
				take(m)
				seen = m.Version
			}
		}
		objs, _, _ := s.reg.list("")
		want := map[string]uint64{}
		for _, o := range (regionRule{region: "west", own: true}).view(objs) {
			want[api.ObjectKey(o)] = o.GetMeta().Version
		}
		if !maps.Equal(holds, want) {
			t.Fatalf("step %d: the agent holds %v\nwant %v", step, holds, want)
		}
	}
	check(-1)
	for i := range 150 {
		switch r := rng.IntN(20); {
		case r < 8:
			health()
		case r < 12:
			endpoint()
		case r < 14:
			session()
		case r < 16:
			svc()
		case r < 18:
			node()
		default:
			del()
		}
		check(i)
	}
}
