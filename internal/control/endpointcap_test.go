package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// manyEndpoints is n agent endpoints of service svc named prefix0000….
func manyEndpoints(svc, prefix string, n int) []api.Endpoint {
	out := make([]api.Endpoint, n)
	for i := range out {
		out[i] = api.Endpoint{Meta: api.Meta{Name: fmt.Sprintf("%s%04d", prefix, i), Namespace: "demo"}, Spec: api.EndpointSpec{
			Service: svc, Address: "127.0.0.1", Ports: []api.EndpointPort{{Name: "tcp", Port: 9000}}}}
	}
	return out
}

// storedOf counts the stored endpoints of node and tells whether key is one.
func storedOf(t *testing.T, s *Server, node, key string) (n int, has bool) {
	t.Helper()
	kvs, _, err := s.st.List(api.KindEndpoint + "/")
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range kvs {
		var e api.Endpoint
		if json.Unmarshal(kv.Value, &e) == nil && e.Spec.Node == node {
			n++
			has = has || kv.Key == key
		}
	}
	return n, has
}

// recvError reads frames until an error frame and returns its text.
func (a *agentConn) recvError() string {
	a.t.Helper()
	for range 100 {
		if m := a.recv(); m.Type == wire.TypeError {
			return m.Error
		}
	}
	a.t.Fatal("no error frame in 100 frames")
	return ""
}

// TestEndpointsPerNodeBounded: a node registers at most
// MaxEndpointsPerNode endpoints (default 1024). Its cap+1st is refused
// with an error the agent gets (and logs), naming the bound and the
// endpoint; its endpoints already stored are kept before a new one; the
// refusals are counted; another node still registers. Before, all 1025
// were stored (only the 32 MiB frame bounded a node's list).
func TestEndpointsPerNodeBounded(t *testing.T) {
	s := startQuietServer(t)
	const limit = DefaultMaxEndpointsPerNode
	refused := func() uint64 { return s.reg.mEndpointsRefused.Get() }

	// cap+1 at once, none stored yet: the first cap by key are kept.
	err := s.reg.syncLocalEndpoints("fresh", manyEndpoints("svc", "e", limit+1))
	if !errors.Is(err, ErrTooManyEndpoints) || !strings.Contains(err.Error(), "Endpoint/demo/e1024") {
		t.Fatalf("cap+1 endpoints: %v, want ErrTooManyEndpoints naming e1024", err)
	}
	if n, has := storedOf(t, s, "fresh", "Endpoint/demo/e1024"); n != limit || has {
		t.Fatalf("stored %d endpoints of fresh (e1024 among them: %v), want %d without it", n, has, limit)
	}
	if got := refused(); got != 1 {
		t.Fatalf("fogmesh_control_endpoints_refused_total %d, want 1", got)
	}

	// Over the sync stream: cap stored, then one more that sorts first is
	// the one refused (a stored one is not displaced), and the agent is
	// told why.
	a := dialAgent(t, s, "big")
	eps := manyEndpoints("svc", "b", limit)
	a.send(&wire.Message{Type: wire.TypeLocal, Endpoints: eps})
	testenv.WaitFor(t, 10*time.Second, "big's endpoints stored", func() bool { n, _ := storedOf(t, s, "big", ""); return n == limit })
	extra := manyEndpoints("svc", "a-new", 1)
	a.send(&wire.Message{Type: wire.TypeLocal, Endpoints: append(extra, eps...)})
	msg := a.recvError()
	for _, want := range []string{"too many endpoints for one node", "node big registers 1025, the bound is 1024", "maxEndpointsPerNode", "Endpoint/demo/a-new0000"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error to the agent %q lacks %q", msg, want)
		}
	}
	if n, has := storedOf(t, s, "big", "Endpoint/demo/a-new0000"); n != limit || has {
		t.Fatalf("stored %d endpoints of big (the new one among them: %v), want %d without it", n, has, limit)
	}
	if got := refused(); got != 2 {
		t.Fatalf("fogmesh_control_endpoints_refused_total %d, want 2", got)
	}

	// Another node is not bounded by big's count.
	o := dialAgent(t, s, "other")
	o.send(&wire.Message{Type: wire.TypeLocal, Endpoints: manyEndpoints("svc", "o", 3)})
	testenv.WaitFor(t, 5*time.Second, "other's endpoints stored", func() bool { n, _ := storedOf(t, s, "other", ""); return n == 3 })
}

// TestEndpointsPerNodeConfigured: Config.MaxEndpointsPerNode sets the bound.
func TestEndpointsPerNodeConfigured(t *testing.T) {
	s, err := New(Config{StateDir: t.TempDir(), AdminAddr: "127.0.0.1:0", SyncAddr: "127.0.0.1:0", Insecure: true, MaxEndpointsPerNode: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if err := s.reg.syncLocalEndpoints("n", manyEndpoints("svc", "e", 4)); err != nil {
		t.Fatal(err)
	}
	err = s.reg.syncLocalEndpoints("n", manyEndpoints("svc", "e", 6))
	if !errors.Is(err, ErrTooManyEndpoints) || !strings.Contains(err.Error(), "refused 2: Endpoint/demo/e0004, Endpoint/demo/e0005") {
		t.Fatalf("6 endpoints over a bound of 4: %v", err)
	}
	if n, _ := storedOf(t, s, "n", ""); n != 4 {
		t.Fatalf("stored %d, want 4", n)
	}
}
