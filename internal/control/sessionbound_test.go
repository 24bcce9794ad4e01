package control

import (
	"bytes"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// TestSessionsBoundedPerService: agents reporting session bindings (a
// client flooding an agent with new session keys) leave at most
// maxSessionsPerService stored for the service, the newest kept, also for a
// single batch over the bound; a session applied through the admin API is
// stored (not refused for the bound) and counts like the others.
func TestSessionsBoundedPerService(t *testing.T) {
	defer func(n int) { maxSessionsPerService = n }(maxSessionsPerService)
	maxSessionsPerService = 50
	s := startServer(t, t.TempDir())
	const doc = `{"apiVersion":"fogmesh.io/v1alpha1","kind":"List","items":[
	{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"hello","namespace":"demo"},"spec":{"ports":[{"name":"http","port":8080}],"session":{"header":"x-s"}}},
	{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"other","namespace":"demo"},"spec":{"ports":[{"name":"http","port":8080}],"session":{"header":"x-s"}}},
	{"apiVersion":"fogmesh.io/v1alpha1","kind":"Endpoint","metadata":{"name":"hello-1","namespace":"demo"},"spec":{"service":"hello","address":"127.0.0.1","ports":[{"name":"http","port":1}]}}]}`
	if code, body := applyDoc(t, s, doc); code != http.StatusOK {
		t.Fatalf("apply: %d %s", code, body)
	}
	a := dialAgent(t, s, "n1")
	sess := func(svc, key string) api.Session {
		return api.Session{Meta: api.Meta{Namespace: "demo"}, Spec: api.SessionSpec{Service: svc, Key: key, Endpoint: "hello-1"}}
	}
	stored := func(svc, key string) bool {
		_, ok, err := s.st.Get("Session/demo/" + api.SessionName(svc, key))
		return err == nil && ok
	}
	count := func(svc string) int {
		objs, _, err := s.reg.list(api.KindSession)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, o := range objs {
			if o.(*api.Session).Spec.Service == svc {
				n++
			}
		}
		return n
	}
	// Another service's few sessions are not evicted for hello's.
	a.send(&wire.Message{Type: wire.TypeSessions, Sessions: []api.Session{sess("other", "o-1"), sess("other", "o-2")}})
	next := 0
	batch := func(n int) {
		m := &wire.Message{Type: wire.TypeSessions}
		for range n {
			m.Sessions = append(m.Sessions, sess("hello", fmt.Sprintf("k-%d", next)))
			next++
		}
		a.send(m)
		last := fmt.Sprintf("k-%d", next-1)
		testenv.WaitFor(t, 10*time.Second, last+" stored", func() bool { return stored("hello", last) })
		if n := count("hello"); n > maxSessionsPerService {
			t.Fatalf("after k-%d: %d sessions of hello stored, bound %d", next-1, n, maxSessionsPerService)
		}
	}
	for range 4 {
		batch(20)
	}
	if stored("hello", "k-0") {
		t.Errorf("the oldest session, k-0, is still stored")
	}
	batch(3 * maxSessionsPerService) // one batch over the bound by itself
	for i := next - 40; i < next; i++ {
		if !stored("hello", fmt.Sprintf("k-%d", i)) {
			t.Errorf("k-%d, among the newest, was evicted", i)
		}
	}
	// The admin API's session is stored, evicting an older one, and kept
	// while agents add a few more.
	if code, body := applyDoc(t, s, `{"apiVersion":"fogmesh.io/v1alpha1","kind":"Session","metadata":{"namespace":"demo"},"spec":{"service":"hello","key":"moved","endpoint":"hello-1"}}`); code != http.StatusOK {
		t.Fatalf("session move: %d %s", code, body)
	}
	if !stored("hello", "moved") || count("hello") > maxSessionsPerService {
		t.Fatalf("after a session move: moved stored %v, %d sessions of hello", stored("hello", "moved"), count("hello"))
	}
	batch(10)
	if !stored("hello", "moved") {
		t.Errorf("the moved session was evicted by 10 newer ones")
	}
	if !stored("other", "o-1") || !stored("other", "o-2") {
		t.Errorf("another service's sessions were evicted")
	}
	var b bytes.Buffer
	s.cfg.Metrics.WritePrometheus(&b)
	if !strings.Contains(b.String(), "fogmesh_control_session_evictions_total ") || strings.Contains(b.String(), "fogmesh_control_session_evictions_total 0\n") {
		t.Errorf("no evictions counted:\n%s", grepLines(b.String(), "session"))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// An agent's sessions are stored only for services that exist and pin
// sessions: invented service names would each get their own bound.
func TestAgentSessionsOnlyForSessionServices(t *testing.T) {
	s := startServer(t, t.TempDir())
	const doc = `{"apiVersion":"fogmesh.io/v1alpha1","kind":"List","items":[
	{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"hello","namespace":"demo"},"spec":{"ports":[{"name":"http","port":8080}],"session":{"header":"x-s"}}},
	{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"plain","namespace":"demo"},"spec":{"ports":[{"name":"http","port":8080}]}},
	{"apiVersion":"fogmesh.io/v1alpha1","kind":"Endpoint","metadata":{"name":"hello-1","namespace":"demo"},"spec":{"service":"hello","address":"127.0.0.1","ports":[{"name":"http","port":1}]}}]}`
	if code, body := applyDoc(t, s, doc); code != http.StatusOK {
		t.Fatalf("apply: %d %s", code, body)
	}
	a := dialAgent(t, s, "n1")
	sess := func(ns, svc, key string) api.Session {
		return api.Session{Meta: api.Meta{Namespace: ns}, Spec: api.SessionSpec{Service: svc, Key: key, Endpoint: "hello-1"}}
	}
	stored := func(ns, svc, key string) bool {
		_, ok, err := s.st.Get("Session/" + ns + "/" + api.SessionName(svc, key))
		return err == nil && ok
	}
	a.send(&wire.Message{Type: wire.TypeSessions, Sessions: []api.Session{
		sess("demo", "invented", "k1"), sess("demo", "plain", "k2"), sess("other", "hello", "k3"), sess("demo", "hello", "k4"),
	}})
	testenv.WaitFor(t, 10*time.Second, "hello's session stored", func() bool { return stored("demo", "hello", "k4") })
	for _, c := range []struct{ ns, svc, key string }{{"demo", "invented", "k1"}, {"demo", "plain", "k2"}, {"other", "hello", "k3"}} {
		if stored(c.ns, c.svc, c.key) {
			t.Errorf("session %s of %s/%s (no such service, or no session affinity) was stored", c.key, c.ns, c.svc)
		}
	}
	var b bytes.Buffer
	s.cfg.Metrics.WritePrometheus(&b)
	if !strings.Contains(b.String(), "fogmesh_control_agent_sessions_dropped_total 3\n") {
		t.Errorf("want 3 dropped sessions counted:\n%s", grepLines(b.String(), "session"))
	}
}
