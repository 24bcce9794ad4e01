package control

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/store"
	"github.com/fogmesh/fogmesh/internal/syncproto"
	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// startQuietServer is startServer with a long heartbeat interval, so the
// node-expiry loop (which lists and decodes the nodes every half interval)
// does not run during a test that counts decodes.
func startQuietServer(t *testing.T) *Server {
	t.Helper()
	s := serveControl(t, Config{StateDir: t.TempDir(), AdminAddr: "127.0.0.1:0", SyncAddr: "127.0.0.1:0",
		HeartbeatInterval: time.Minute, Insecure: true})
	return s
}

// feedOf waits for the server's feed (made when Serve starts).
func feedOf(t *testing.T, s *Server) *feed {
	t.Helper()
	testenv.WaitFor(t, 5*time.Second, "the feed", func() bool { return s.reg.feed() != nil })
	return s.reg.feed()
}

// applyObjs stores objects through the registry (as the admin API does).
func applyObjs(t *testing.T, s *Server, objs ...api.Object) uint64 {
	t.Helper()
	rev, err := s.reg.apply(objs)
	if err != nil {
		t.Fatal(err)
	}
	return rev
}

func svcObj(ns, name string) *api.Service {
	return &api.Service{APIVersion: api.APIVersion, Kind: api.KindService, Meta: api.Meta{Namespace: ns, Name: name}, Spec: api.ServiceSpec{Ports: []api.ServicePort{{Name: "http", Port: 8080, Protocol: "http"}}}}
}

func epObj(ns, name, svc, node string, port int) *api.Endpoint {
	return &api.Endpoint{APIVersion: api.APIVersion, Kind: api.KindEndpoint, Meta: api.Meta{Namespace: ns, Name: name},
		Spec: api.EndpointSpec{Service: svc, Node: node, Address: "127.101.0.1", Ports: []api.EndpointPort{{Name: "http", Port: port}}}}
}

// recvUpdate reads frames until an update, acking it.
func (a *agentConn) recvUpdate() *wire.Message {
	a.t.Helper()
	for range 100 {
		m := a.recv()
		if m.Type == wire.TypeUpdate {
			a.send(&wire.Message{Type: wire.TypeAck, Nonce: m.Nonce, Version: m.Version})
			return m
		}
	}
	a.t.Fatal("no update in 100 frames")
	return nil
}

// recvUntil reads updates until one reaches version rev, and returns them.
func (a *agentConn) recvUntil(rev uint64) []*wire.Message {
	a.t.Helper()
	var out []*wire.Message
	for range 1000 {
		m := a.recvUpdate()
		out = append(out, m)
		if m.Version >= rev {
			return out
		}
	}
	a.t.Fatalf("no update reached version %d", rev)
	return nil
}

// body is an update without its nonce: what every stream must get alike.
func body(t *testing.T, m *wire.Message) string {
	t.Helper()
	c := *m
	c.Nonce = ""
	b, err := json.Marshal(&c)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Every stream gets the same bytes for the same commit, and the commit is
// decoded once, not once per stream (before the feed, each of the N
// streams decoded it: N decodes).
func TestFeedDecodesEachCommitOnceForAllStreams(t *testing.T) {
	s := startQuietServer(t)
	applyObjs(t, s, svcObj("demo", "a"))
	const n = 12
	var agents []*agentConn
	for i := range n {
		a := dialAgent(t, s, fmt.Sprintf("n%d", i))
		a.send(&wire.Message{Type: wire.TypeSubscribe})
		agents = append(agents, a)
	}
	// Let every stream take its snapshot and the other agents' nodes.
	rev, _ := s.st.Rev()
	for _, a := range agents {
		a.recvUntil(rev)
	}
	before := decoded.Load()
	rev = applyObjs(t, s, epObj("demo", "e1", "a", "", 9001))
	var first string
	for i, a := range agents {
		ups := a.recvUntil(rev)
		last := ups[len(ups)-1]
		if got := strings.Join(names(last), ","); got != "Endpoint demo/e1" {
			t.Fatalf("agent %d: update %d has %q, want the endpoint", i, last.Version, got)
		}
		if i == 0 {
			first = body(t, last)
		} else if b := body(t, last); b != first {
			t.Fatalf("agent %d got another update than agent 0:\n%s\n%s", i, b, first)
		}
	}
	if d := decoded.Load() - before; d > 2 {
		t.Fatalf("one change was decoded %d times for %d streams, want once", d, n)
	}
}

// Subscribers that connect at the same revision share one snapshot: the
// store is not listed and decoded again for each (before: one full decode
// of the store per subscriber).
func TestSnapshotSharedBetweenSubscribers(t *testing.T) {
	s := startQuietServer(t)
	var objs []api.Object
	objs = append(objs, svcObj("demo", "a"))
	for i := range 200 {
		objs = append(objs, epObj("demo", fmt.Sprintf("e%03d", i), "a", "", 9000+i))
	}
	applyObjs(t, s, objs...)
	a1 := dialAgent(t, s, "n1")
	a2 := dialAgent(t, s, "n2") // both registered: one revision for both snapshots
	rev, _ := s.st.Rev()
	testenv.WaitFor(t, 5*time.Second, "feed at the store's revision", func() bool { r, _ := feedOf(t, s).watch(); return r >= rev })
	before, listed := decoded.Load(), s.st.(*store.Store).Listed()
	builds := feedOf(t, s).snapCount()
	a1.send(&wire.Message{Type: wire.TypeSubscribe})
	a2.send(&wire.Message{Type: wire.TypeSubscribe})
	s1, s2 := a1.recvUpdate(), a2.recvUpdate()
	if !s1.Full || !s2.Full || len(s1.Resources) != 203 {
		t.Fatalf("snapshots: full %v/%v with %d/%d resources, want full with 203", s1.Full, s2.Full, len(s1.Resources), len(s2.Resources))
	}
	if body(t, s1) != body(t, s2) {
		t.Fatal("two subscribers at one revision got different snapshots")
	}
	if d := decoded.Load() - before; d > 0 {
		t.Fatalf("snapshots decoded %d stored objects, want none (the feed holds them decoded)", d)
	}
	if l := s.st.(*store.Store).Listed() - listed; l > 0 {
		t.Fatalf("snapshots listed %d keys of the store, want none", l)
	}
	if b := feedOf(t, s).snapCount() - builds; b != 1 {
		t.Fatalf("built %d snapshots for two subscribers at one revision, want 1", b)
	}
}

// A stream that is behind gets one delta covering every commit since its
// version, with each key once at its latest state.
func TestFeedCoalescesCommitsForAStreamBehind(t *testing.T) {
	s := startServer(t, t.TempDir())
	applyObjs(t, s, svcObj("demo", "a"))
	fd := feedOf(t, s)
	base, _ := s.st.Rev()
	testenv.WaitFor(t, 5*time.Second, "feed at the store's revision", func() bool { r, _ := fd.watch(); return r >= base })
	var last uint64
	for i := range 5 {
		last = applyObjs(t, s, epObj("demo", "e1", "a", "", 9000+i), epObj("demo", fmt.Sprintf("x%d", i), "a", "", 9100))
	}
	testenv.WaitFor(t, 5*time.Second, "feed at the last change", func() bool { r, _ := fd.watch(); return r >= last })
	got, rev, ok := fd.since(base)
	if !ok || rev != last {
		t.Fatalf("since(%d) = ok %v rev %d, want ok at %d", base, ok, rev, last)
	}
	var keys []string
	for _, e := range got {
		keys = append(keys, e.key)
		if e.key == "Endpoint/demo/e1" && !bytes.Contains(e.enc, []byte(`"port":9004`)) {
			t.Fatalf("e1 coalesced to %s, want its last state (port 9004)", e.enc)
		}
	}
	sort.Strings(keys)
	want := []string{"Endpoint/demo/e1", "Endpoint/demo/x0", "Endpoint/demo/x1", "Endpoint/demo/x2", "Endpoint/demo/x3", "Endpoint/demo/x4"}
	if !slices.Equal(keys, want) {
		t.Fatalf("coalesced delta has %v, want %v", keys, want)
	}
	// Behind the feed's bounded log, the store's log of keys still gives
	// a delta (states from the feed), not a snapshot.
	fd.mu.Lock()
	fd.recent, fd.floor = nil, last
	fd.mu.Unlock()
	if _, _, ok := fd.since(base); ok {
		t.Fatal("since behind the log's floor answered")
	}
	res, rev, err := fd.resume(base)
	if err != nil || rev != last || len(res) != len(want) {
		t.Fatalf("resume(%d) = %d entries at %d, %v; want %d at %d", base, len(res), rev, err, len(want), last)
	}
}

func updateRefs(m *wire.Message) (res, removed []string) {
	for _, r := range m.Resources {
		res = append(res, r.Type+" "+r.Name)
	}
	for _, r := range m.Removed {
		removed = append(removed, r.Type+" "+r.Name)
	}
	sort.Strings(res)
	sort.Strings(removed)
	return res, removed
}

// A subscriber that names services gets those services, what belongs to
// them, authorization policies, its own node and the nodes its endpoints
// run on; a change elsewhere sends it nothing; what leaves its scope is
// removed at it.
func TestScopedSubscriptionDeliversExactlyItsScope(t *testing.T) {
	s := startServer(t, t.TempDir())
	for _, n := range []string{"w1", "w2", "w3"} {
		applyObjs(t, s, &api.Node{APIVersion: api.APIVersion, Kind: api.KindNode, Meta: api.Meta{Name: n}, Spec: api.NodeSpec{Site: "shop-1", Region: "east", MeshAddress: "127.101.0.9:7072"}})
	}
	applyObjs(t, s, svcObj("demo", "a"), svcObj("demo", "b"), svcObj("other", "c"),
		epObj("demo", "a1", "a", "w1", 9001), epObj("demo", "b1", "b", "w2", 9002), epObj("other", "c1", "c", "w3", 9003),
		&api.AuthorizationPolicy{APIVersion: api.APIVersion, Kind: api.KindAuthorizationPolicy, Meta: api.Meta{Namespace: "demo", Name: "deny-all"}, Spec: api.AuthorizationPolicySpec{Action: "DENY"}})
	ag := dialAgent(t, s, "me")
	ag.send(&wire.Message{Type: wire.TypeSubscribe, Scope: &wire.Scope{Services: []string{"demo/a", "other/*", "bad"}}})
	snap := ag.recvUpdate()
	res, _ := updateRefs(snap)
	want := []string{"AuthorizationPolicy demo/deny-all", "Endpoint demo/a1", "Endpoint other/c1", "Node me", "Node w1", "Node w3",
		"Service demo/a", "Service other/c"}
	if !snap.Full || !slices.Equal(res, want) {
		t.Fatalf("scoped snapshot (full %v) has %v, want %v", snap.Full, res, want)
	}

	// A change to a service out of scope: nothing (not even an empty
	// update, within emptyEvery); then one in scope arrives alone.
	applyObjs(t, s, epObj("demo", "b1", "b", "w2", 9102))
	rev := applyObjs(t, s, epObj("demo", "a1", "a", "w1", 9101))
	m := ag.recvUpdate()
	if res, rem := updateRefs(m); m.Version != rev || !slices.Equal(res, []string{"Endpoint demo/a1"}) || len(rem) != 0 {
		t.Fatalf("update %d (want %d) has %v, removed %v; want only demo/a1", m.Version, rev, res, rem)
	}

	// a1 moves to w2: w2 arrives with it, w1 (no endpoint in scope left)
	// is removed.
	rev = applyObjs(t, s, epObj("demo", "a1", "a", "w2", 9101))
	m = ag.recvUpdate()
	res, rem := updateRefs(m)
	if m.Version != rev || !slices.Equal(res, []string{"Endpoint demo/a1", "Node w2"}) || !slices.Equal(rem, []string{"Node w1"}) {
		t.Fatalf("move: update %d has %v, removed %v; want a1 and w2, w1 removed", m.Version, res, rem)
	}

	// a1 leaves the scope (now an endpoint of b): removed, with w2.
	rev = applyObjs(t, s, epObj("demo", "a1", "b", "w2", 9101))
	m = ag.recvUpdate()
	res, rem = updateRefs(m)
	if m.Version != rev || len(res) != 0 || !slices.Equal(rem, []string{"Endpoint demo/a1", "Node w2"}) {
		t.Fatalf("leave: update %d has %v, removed %v; want a1 and w2 removed", m.Version, res, rem)
	}

	// A node in scope that changes is sent; deleting a service in scope
	// removes it.
	rev = applyObjs(t, s, &api.Node{APIVersion: api.APIVersion, Kind: api.KindNode, Meta: api.Meta{Name: "w3"}, Spec: api.NodeSpec{Site: "shop-2", Region: "east", MeshAddress: "127.101.0.9:7072"}})
	if m = ag.recvUpdate(); m.Version != rev || strings.Join(names(m), ",") != "Node w3" {
		t.Fatalf("node change: update %d has %v", m.Version, names(m))
	}
	rev, err := s.reg.deleteObj(api.KindService, "other", "c")
	if err != nil {
		t.Fatal(err)
	}
	m = ag.recvUpdate()
	if res, rem := updateRefs(m); m.Version != rev || len(res) != 0 || !slices.Equal(rem, []string{"Service other/c"}) {
		t.Fatalf("delete: update %d has %v, removed %v", m.Version, res, rem)
	}

	// An unscoped subscriber still gets everything.
	all := dialAgent(t, s, "all")
	all.send(&wire.Message{Type: wire.TypeSubscribe})
	if snap := all.recvUpdate(); len(snap.Resources) != 11 {
		t.Fatalf("unscoped snapshot has %d resources (%v), want 11", len(snap.Resources), names(snap))
	}
}

// Encoding a frame from the items' encodings gives what wire.WriteFrame
// gives.
func TestEncodeUpdateFrameMatchesWire(t *testing.T) {
	for _, m := range []*wire.Message{
		{Type: wire.TypeUpdate, Version: 7, StoreID: "s", Nonce: "3"},
		{Type: wire.TypeUpdate, Version: 8, StoreID: "s", Nonce: "4", Full: true, Chunk: 2, Chunks: 3,
			Resources: []wire.Resource{{ResourceRef: wire.ResourceRef{Type: "Service", Name: "demo/a"}, Version: 3, Body: json.RawMessage(`{"x":"<a>"}`)}},
			Removed:   []wire.ResourceRef{{Type: "Node", Name: "n1"}, {Type: "Endpoint", Name: "demo/e"}}},
	} {
		var res, rem [][]byte
		for _, r := range m.Resources {
			b, _ := json.Marshal(r)
			res = append(res, b)
		}
		for _, r := range m.Removed {
			b, _ := json.Marshal(r)
			rem = append(rem, b)
		}
		buf := encodeUpdateFrame(m, res, rem)
		var want bytes.Buffer
		if err := wire.Write(&want, m); err != nil {
			t.Fatal(err)
		}
		got, err := wire.NewReader(bytes.NewReader(buf)).Read()
		if err != nil {
			t.Fatal(err)
		}
		exp, _ := wire.NewReader(&want).Read()
		gb, _ := json.Marshal(got)
		eb, _ := json.Marshal(exp)
		if !bytes.Equal(gb, eb) {
			t.Fatalf("spliced frame decodes to %s, want %s", gb, eb)
		}
	}
}

// An agent's endpoint list and a new service touch only what they need:
// no scan of every endpoint (syncLocalEndpoints) or every service
// (allocateVIPLocked) per call.
func TestLocalEndpointsAndVIPsDoNotScanTheStore(t *testing.T) {
	s := startServer(t, t.TempDir())
	var objs []api.Object
	for i := range 300 {
		objs = append(objs, svcObj("demo", fmt.Sprintf("s%03d", i)), epObj("demo", fmt.Sprintf("e%03d", i), fmt.Sprintf("s%03d", i), "", 9000))
	}
	applyObjs(t, s, objs...)
	// The indexes are built once, on first use.
	if err := s.reg.syncLocalEndpoints("w1", nil); err != nil {
		t.Fatal(err)
	}
	applyObjs(t, s, svcObj("demo", "warm"))

	listed := s.st.(*store.Store).Listed()
	for i := range 20 {
		eps := []api.Endpoint{*epObj("demo", fmt.Sprintf("w1-%d", i), "s000", "", 9500)}
		if err := s.reg.syncLocalEndpoints("w1", eps); err != nil {
			t.Fatal(err)
		}
		applyObjs(t, s, svcObj("demo", fmt.Sprintf("new%d", i)))
	}
	if l := s.st.(*store.Store).Listed() - listed; l != 0 {
		t.Fatalf("20 local endpoint lists and 20 new services listed %d stored keys, want 0", l)
	}
	// Still exact: w1 holds only its last endpoint; VIPs are distinct and
	// a deleted service's is reused first.
	eps, _, _ := s.reg.list(api.KindEndpoint)
	var own []string
	for _, o := range eps {
		if e := o.(*api.Endpoint); e.Spec.Node == "w1" {
			own = append(own, e.Meta.Name)
		}
	}
	if !slices.Equal(own, []string{"w1-19"}) {
		t.Fatalf("node w1 holds %v, want [w1-19]", own)
	}
	svcs, _, _ := s.reg.list(api.KindService)
	seen := map[uint32]string{}
	var freed uint32
	for _, o := range svcs {
		v := o.(*api.Service)
		if prev, dup := seen[v.Status.VIPIndex]; dup || v.Status.VIPIndex == 0 {
			t.Fatalf("service %s has VIP index %d (also %s)", v.Meta.Key(), v.Status.VIPIndex, prev)
		}
		seen[v.Status.VIPIndex] = v.Meta.Key()
		if v.Meta.Name == "s007" {
			freed = v.Status.VIPIndex
		}
	}
	if _, err := s.reg.deleteObj(api.KindService, "demo", "s007"); err != nil {
		t.Fatal(err)
	}
	n := svcObj("demo", "again")
	applyObjs(t, s, n)
	if n.Status.VIPIndex != freed {
		t.Fatalf("new service got VIP index %d, want the freed %d", n.Status.VIPIndex, freed)
	}
	// Deleting the node removes its endpoints (through the index).
	applyObjs(t, s, &api.Node{APIVersion: api.APIVersion, Kind: api.KindNode, Meta: api.Meta{Name: "w1"}, Spec: api.NodeSpec{Site: "shop-1", Region: "east"}})
	if _, err := s.reg.deleteObj(api.KindNode, "", "w1"); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := s.st.Get("Endpoint/demo/w1-19"); ok {
		t.Fatal("the deleted node's endpoint is still stored")
	}
}

// A commit wakes the unscoped streams and the scoped ones whose scope it
// touches, not every stream: a change to one service is not work for
// every subscriber.
func TestFeedWakesOnlyTheScopeOfAChange(t *testing.T) {
	s := startServer(t, t.TempDir())
	applyObjs(t, s, svcObj("demo", "a"), svcObj("demo", "b"))
	fd := feedOf(t, s)
	sub := func(services ...string) *feedSub {
		m := &wire.Message{Type: wire.TypeSubscribe}
		if len(services) > 0 {
			m.Scope = &wire.Scope{Services: services}
		}
		return fd.subscribe(syncproto.NewFilter(m))
	}
	all, a, b, ns := sub(), sub("demo/a"), sub("demo/b"), sub("demo/*")
	drain := func() {
		for _, x := range []*feedSub{all, a, b, ns} {
			select {
			case <-x.ch:
			default:
			}
		}
	}
	woken := func(x *feedSub) bool {
		select {
		case <-x.ch:
			return true
		default:
			return false
		}
	}
	rev, _ := s.st.Rev()
	testenv.WaitFor(t, 5*time.Second, "feed at the store's revision", func() bool { r, _ := fd.watch(); return r >= rev })
	drain()
	rev = applyObjs(t, s, epObj("demo", "a1", "a", "", 9001))
	testenv.WaitFor(t, 5*time.Second, "feed at the change", func() bool { r, _ := fd.watch(); return r >= rev })
	if !woken(all) || !woken(a) || !woken(ns) || woken(b) {
		t.Fatal("a change of demo/a must wake the unscoped, demo/a and demo/* subscribers, not demo/b's")
	}
	// An endpoint that moves from a to b wakes both (a's must remove it).
	rev = applyObjs(t, s, epObj("demo", "a1", "b", "", 9001))
	testenv.WaitFor(t, 5*time.Second, "feed at the move", func() bool { r, _ := fd.watch(); return r >= rev })
	if !woken(a) || !woken(b) {
		t.Fatal("a move from demo/a to demo/b must wake both")
	}
	// A node wakes only the scoped streams that need it.
	fd.holdNodes(a, []string{"w1"}, nil)
	node := func(name string) uint64 {
		return applyObjs(t, s, &api.Node{APIVersion: api.APIVersion, Kind: api.KindNode, Meta: api.Meta{Name: name},
			Spec: api.NodeSpec{Site: "shop-1", Region: "east", MeshAddress: "127.101.0.9:7072"}})
	}
	drain()
	rev = node("w2")
	testenv.WaitFor(t, 5*time.Second, "feed at node w2", func() bool { r, _ := fd.watch(); return r >= rev })
	if !woken(all) || woken(a) || woken(b) || woken(ns) {
		t.Fatal("a node no scoped stream needs must wake only the unscoped ones")
	}
	rev = node("w1")
	testenv.WaitFor(t, 5*time.Second, "feed at node w1", func() bool { r, _ := fd.watch(); return r >= rev })
	if !woken(a) || woken(b) {
		t.Fatal("node w1 must wake the stream that needs it, only")
	}
	fd.unsubscribe(b)
	fd.mu.Lock()
	n := len(fd.subsSvc["demo/b"])
	fd.mu.Unlock()
	if n != 0 {
		t.Fatal("unsubscribed stream still indexed")
	}
}

// A subscriber that takes a shared snapshot older than the feed (built for
// another subscriber moments before) gets what was committed after it at
// once, not at the next commit (which may never come).
func TestReusedSnapshotIsFollowedByTheRest(t *testing.T) {
	s := startQuietServer(t)
	applyObjs(t, s, svcObj("demo", "a"))
	fd := feedOf(t, s)
	a1 := dialAgent(t, s, "n1") // welcomed, not yet subscribed
	a2 := dialAgent(t, s, "n2")
	a2.send(&wire.Message{Type: wire.TypeSubscribe})
	snap := a2.recvUpdate() // the snapshot n1 will reuse
	rev := applyObjs(t, s, epObj("demo", "e1", "a", "", 9001))
	testenv.WaitFor(t, 5*time.Second, "feed at the change", func() bool { r, _ := fd.watch(); return r >= rev })
	a1.send(&wire.Message{Type: wire.TypeSubscribe})
	got := a1.recvUpdate()
	if !got.Full || got.Version != snap.Version {
		t.Fatalf("n1 got update %d (full %v), want the shared snapshot at %d", got.Version, got.Full, snap.Version)
	}
	// No further commit: the delta must come anyway.
	if m := a1.recvUpdate(); m.Version != rev || strings.Join(names(m), ",") != "Endpoint demo/e1" {
		t.Fatalf("after the snapshot: update %d with %v, want %d with the endpoint", m.Version, names(m), rev)
	}
}

// TestFeedEntrySharesTheBody: an entry keeps one copy of its object's
// JSON, its encoding; the resource's body is the end of it, the same bytes
// as encoding the object on its own, and the whole still decodes as the
// resource.
func TestFeedEntrySharesTheBody(t *testing.T) {
	ep := epObj("demo", "w1", "web", "n1", 9500)
	v, err := json.Marshal(ep)
	if err != nil {
		t.Fatal(err)
	}
	e, err := newFeedEntry(store.Change{Key: "Endpoint/demo/w1", Rev: 7, Value: v}, 7)
	if err != nil {
		t.Fatal(err)
	}
	want, err := wire.NewResource(e.obj)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(e.res.Body, want.Body) {
		t.Fatalf("body %s, want %s", e.res.Body, want.Body)
	}
	if len(e.res.Body) == 0 || &e.res.Body[0] != &e.enc[len(e.enc)-1-len(e.res.Body)] {
		t.Fatal("the body is a copy, not the end of the encoding")
	}
	if cap(e.res.Body) != len(e.res.Body) {
		t.Fatalf("the body's capacity %d reaches past it (%d): an append would overwrite the encoding", cap(e.res.Body), len(e.res.Body))
	}
	var got wire.Resource
	if err := json.Unmarshal(e.enc, &got); err != nil || !bytes.Equal(got.Body, want.Body) || got.ResourceRef != want.ResourceRef {
		t.Fatalf("encoding %s decodes as %+v (%v)", e.enc, got, err)
	}
}
