package control

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/store/etcdstore"
	"github.com/fogmesh/fogmesh/internal/store/etcdstore/etcdtest"
	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// startReplica starts a control plane replica named name on the etcd
// cluster c.
func startReplica(t *testing.T, c *etcdtest.Cluster, name string, insecure bool) *Server {
	t.Helper()
	return startReplicaTimeout(t, c, name, insecure, time.Second)
}

// startReplicaTimeout is startReplica with the store's etcd timeout.
func startReplicaTimeout(t *testing.T, c *etcdtest.Cluster, name string, insecure bool, timeout time.Duration) *Server {
	t.Helper()
	st, err := etcdstore.Open(etcdstore.Options{Endpoints: c.Endpoints(), Name: name, LeaseTTL: 2, Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{StateDir: t.TempDir(), AdminAddr: "127.0.0.1:0", SyncAddr: "127.0.0.1:0", Name: name,
		HeartbeatInterval: 200 * time.Millisecond, NodeExpiry: 300 * time.Millisecond, Insecure: insecure, Store: st, Metrics: metrics.NewSet()})
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { s.Serve(context.Background()); close(done) }()
	t.Cleanup(func() { s.Close(); <-done })
	return s
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func counter(s *Server, name string) uint64 { return s.cfg.Metrics.GetOrCreateCounter(name).Get() }

// Two replicas on one etcd: what is applied through one is served by the
// other at the same version, an agent moving between them resumes with a
// delta, and exactly one of them leads.
func TestReplicasShareStore(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a, b := startReplica(t, c, "a", true), startReplica(t, c, "b", true)
	if a.StoreID() != b.StoreID() {
		t.Fatalf("store IDs %s and %s", a.StoreID(), b.StoreID())
	}
	if code, body := applyDoc(t, a, helloSvc); code != 200 {
		t.Fatal(code, body)
	}
	code, body := get(t, "http://"+b.AdminAddr()+"/v1/services")
	if code != 200 || !strings.Contains(body, `"hello"`) || !strings.Contains(body, `"vip": "127.77.0.1"`) {
		t.Fatalf("replica b lists services: %d %s", code, body)
	}

	// An agent on a takes a snapshot, then moves to b knowing a's version.
	ag := dialAgent(t, a, "n1")
	ag.send(&wire.Message{Type: wire.TypeSubscribe})
	snap := ag.recv()
	if !snap.Full || snap.StoreID != a.StoreID() {
		t.Fatalf("first update: %+v", snap)
	}
	ag.c.Close()
	applyDoc(t, a, strings.Replace(helloSvc, "8080", "8081", 1))
	bg := dialAgent(t, b, "n1")
	bg.send(&wire.Message{Type: wire.TypeSubscribe, StoreID: snap.StoreID, KnownVersion: snap.Version})
	m := bg.recv()
	if m.Full || strings.Join(names(m), ",") != "Service demo/hello" || m.Version <= snap.Version {
		t.Fatalf("after moving to b: full=%v %v version %d (was %d), want a delta with the changed service", m.Full, names(m), m.Version, snap.Version)
	}
	// Counted once the write returned: the agent can read the frame first.
	testenv.WaitFor(t, 10*time.Second, "b's counters to say one delta and no snapshot", func() bool {
		return counter(b, "fogmesh_control_sync_snapshots_sent_total") == 0 && counter(b, "fogmesh_control_sync_deltas_sent_total") == 1
	})

	// One leader, named in /healthz, /v1/status and the metric.
	testenv.WaitFor(t, 10*time.Second, "one leader", func() bool { return a.Status().Leader != b.Status().Leader })
	lead, follower := a, b
	if b.Status().Leader {
		lead, follower = b, a
	}
	testenv.WaitFor(t, 5*time.Second, "the follower to know the leader", func() bool { return follower.Status().LeaderName == lead.cfg.Name })
	if code, body := get(t, "http://"+follower.AdminAddr()+"/healthz"); code != 200 || !strings.Contains(body, "leader: "+lead.cfg.Name) {
		t.Fatalf("follower healthz: %d %q", code, body)
	}
	for s, want := range map[*Server]string{lead: "fogmesh_control_leader 1", follower: "fogmesh_control_leader 0"} {
		if _, body := get(t, "http://"+s.AdminAddr()+"/metrics"); !strings.Contains(body, want+"\n") {
			t.Errorf("%s metrics lack %q", s.cfg.Name, want)
		}
	}
	// Work that must run once refuses on the follower.
	if err := follower.needLeader("x"); err == nil {
		t.Error("the follower accepts leader-only work")
	}
}

// Secure replicas share one CA: the first makes it, the second takes it,
// and a node certificate from one is accepted by the other.
func TestReplicasShareCA(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a := startReplica(t, c, "a", false)
	b := startReplica(t, c, "b", false)
	if a.CA().Pin() != b.CA().Pin() {
		t.Fatalf("replicas run different CAs: %s and %s", a.CA().Pin(), b.CA().Pin())
	}
	svid := signNode(t, a.CA(), "shop-1", "n1", time.Hour)
	m, err := syncDial(t, b, svid, "shop-1", "n1")
	if err != nil || m.Type != wire.TypeWelcome {
		t.Fatalf("b refuses a node certificate of a's CA: %v %+v", err, m)
	}
	// A rotation on the leader (what POST /v1/ca/rotate does there)
	// reaches the other replica.
	testenv.WaitFor(t, 10*time.Second, "one leader", func() bool { return a.st.Leader() != b.st.Leader() })
	lead, other := a, b
	if b.st.Leader() {
		lead, other = b, a
	}
	old := lead.CA().Pin()
	if err := lead.sec.ca.Rotate(); err != nil {
		t.Fatal(err)
	}
	if err := lead.pushCA(); err != nil {
		t.Fatal(err)
	}
	// Its maintenance loop (every 5 s) runs followCA; run it now.
	other.sec.followCA()
	if other.CA().Pin() != lead.CA().Pin() || len(other.CA().Roots()) != 2 {
		t.Fatalf("the other replica did not follow the rotation: pin %s, %d roots", other.CA().Pin(), len(other.CA().Roots()))
	}
	if lead.CA().Pin() == old {
		t.Fatal("rotation kept the pin")
	}
}

// etcd lost: the admin API answers writes with 503 and a clear error,
// /healthz says degraded, agents still get the last state; when etcd
// returns, writes work again and nothing was lost.
func TestReplicaWithoutEtcd(t *testing.T) {
	c := etcdtest.Start(t, 3)
	a := startReplica(t, c, "a", true)
	if code, body := applyDoc(t, a, helloSvc); code != 200 {
		t.Fatal(code, body)
	}
	// n0 is connected through the loss and the recovery.
	n0 := dialAgent(t, a, "n0")
	n0.send(&wire.Message{Type: wire.TypeSubscribe})
	first := n0.recv()
	n0.send(&wire.Message{Type: wire.TypeAck, Nonce: first.Nonce, Version: first.Version})
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
				wire.Write(n0.c, &wire.Message{Type: wire.TypeHeartbeat, Load: 1})
			}
		}
	}()
	c.Kill(1)
	c.Kill(2) // no quorum: member 0 can only serve reads of what it has
	code, body := applyDoc(t, a, strings.Replace(helloSvc, "8080", "8081", 1))
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "store unavailable") {
		t.Fatalf("apply without quorum: %d %s; want 503 naming the store", code, body)
	}
	if code, body := get(t, "http://"+a.AdminAddr()+"/healthz"); code != http.StatusServiceUnavailable || !strings.HasPrefix(body, "degraded") {
		t.Fatalf("healthz without quorum: %d %q", code, body)
	}
	// A new agent connecting now gets the last state.
	ag := dialAgent(t, a, "n1")
	ag.send(&wire.Message{Type: wire.TypeSubscribe})
	if m := ag.recv(); !m.Full || !strings.Contains(strings.Join(names(m), ","), "Service demo/hello") {
		t.Fatalf("agent without quorum got %+v", m)
	}
	c.Restart(1)
	c.Restart(2)
	testenv.WaitFor(t, 20*time.Second, "healthz ok again", func() bool {
		code, _ := get(t, "http://"+a.AdminAddr()+"/healthz")
		return code == 200
	})
	if code, body := applyDoc(t, a, strings.Replace(helloSvc, "8080", "8081", 1)); code != 200 {
		t.Fatalf("apply after recovery: %d %s", code, body)
	}
	if _, body := get(t, "http://"+a.AdminAddr()+"/v1/services"); !strings.Contains(body, "8081") {
		t.Fatalf("services after recovery: %s", body)
	}
	// n0's stream lived through it and gets the change as a delta.
	deadline := time.Now().Add(10 * time.Second)
	for {
		m := n0.recv()
		if m.Type == wire.TypeUpdate && strings.Contains(strings.Join(names(m), ","), "Service demo/hello") {
			if m.Full {
				t.Fatal("n0 got a snapshot after the recovery, want a delta")
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("n0 never got the change made after the recovery")
		}
	}
}

// Only the leader expires nodes, and it counts heartbeats any replica
// heard: a node heartbeating to the follower stays ready, and one that
// goes silent is marked not ready once.
func TestLeaderExpiresNodesHeardByAnyReplica(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a, b := startReplica(t, c, "a", true), startReplica(t, c, "b", true)
	testenv.WaitFor(t, 10*time.Second, "one leader", func() bool { return a.st.Leader() != b.st.Leader() })
	follower := a
	if a.st.Leader() {
		follower = b
	}
	n1 := dialAgent(t, follower, "n1")
	n1.send(&wire.Message{Type: wire.TypeSubscribe})
	n1.recv()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // n1 heartbeats to the follower until stop
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
				wire.Write(n1.c, &wire.Message{Type: wire.TypeHeartbeat, Load: 1})
			}
		}
	}()
	ready := func() bool {
		kv, ok, err := a.st.Get("Node/n1")
		return err == nil && ok && strings.Contains(string(kv.Value), `"ready":true`)
	}
	// Three node timeouts (800 ms each) with heartbeats: never not ready.
	deadline := time.Now().Add(2400 * time.Millisecond)
	for time.Now().Before(deadline) {
		if !ready() {
			close(stop)
			<-done
			t.Fatal("n1 marked not ready while heartbeating to the follower")
		}
		time.Sleep(50 * time.Millisecond)
	}
	close(stop)
	<-done
	testenv.WaitFor(t, 10*time.Second, "n1 not ready once silent", func() bool { return !ready() })
}

// Services applied at once through both replicas get distinct virtual IPs:
// allocation is one optimistic transaction, no leader needed.
func TestReplicasAllocateDistinctVIPs(t *testing.T) {
	c := etcdtest.Start(t, 1)
	// Every write must succeed here, so the store's bound on one attempt
	// (begin, then commit) is generous: startReplica's 1 s is for tests
	// that kill etcd and want the 503 soon, and twelve contending writes,
	// each committing with an fsync of etcd's WAL on a disk shared with
	// other builds, took over 1 s at load 16 (503 "commit: context
	// deadline exceeded"). A conflict still retries at once.
	reps := []*Server{startReplicaTimeout(t, c, "a", true, 15*time.Second), startReplicaTimeout(t, c, "b", true, 15*time.Second)}
	var wg sync.WaitGroup
	errs := make(chan string, 20)
	for i := range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			doc := strings.Replace(helloSvc, "name: hello", fmt.Sprintf("name: s%d", i), 1)
			if code, body := applyDoc(t, reps[i%2], doc); code != 200 {
				errs <- fmt.Sprintf("%d %s", code, body)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	objs, _, err := reps[0].reg.list(api.KindService)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]string{}
	for _, o := range objs {
		s := o.(*api.Service)
		if other, dup := seen[s.Status.VIP]; dup || s.Status.VIP == "" {
			t.Fatalf("VIP %q of %s also given to %s", s.Status.VIP, s.Meta.Name, other)
		}
		seen[s.Status.VIP] = s.Meta.Name
	}
	if len(seen) != 12 {
		t.Fatalf("%d services stored, want 12", len(seen))
	}
}

// No etcd member answers at all: a replica still admits a new agent and
// gives it the last state it saw; writes answer 503.
func TestReplicaServesLastStateWithoutEtcd(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a := startReplicaTimeout(t, c, "a", true, 600*time.Millisecond)
	if code, body := applyDoc(t, a, helloSvc); code != 200 {
		t.Fatal(code, body)
	}
	rev, _ := a.st.Rev()
	testenv.WaitFor(t, 5*time.Second, "the replica to hold the last state", func() bool {
		r, ok := a.st.(*etcdstore.Store).Mirrored()
		return ok && r == rev
	})
	c.Kill(0)
	if code, body := applyDoc(t, a, strings.Replace(helloSvc, "8080", "8081", 1)); code != http.StatusServiceUnavailable {
		t.Fatalf("apply without etcd: %d %s", code, body)
	}
	ag := dialAgent(t, a, "n9")
	ag.send(&wire.Message{Type: wire.TypeSubscribe})
	m := ag.recv()
	if !m.Full || m.Version != rev || !strings.Contains(strings.Join(names(m), ","), "Service demo/hello") {
		t.Fatalf("new agent without etcd: full=%v version %d (last %d) %v", m.Full, m.Version, rev, names(m))
	}
}
