package control

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/syncproto"
	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// sessionDoc is a session binding of service web in namespace demo.
func sessionDoc(key, endpoint string) string {
	return `{"apiVersion":"fogmesh.io/v1alpha1","kind":"Session","metadata":{"namespace":"demo"},
	"spec":{"service":"web","key":"` + key + `","endpoint":"` + endpoint + `"}}`
}

// TestRegionSessionBindingsGoUp: session bindings that a region's agents
// create go up to the global plane owned by the region, as endpoints do; a
// move at the region follows, the global plane refuses to change them, and
// a name the global plane holds under its own ownership keeps its copy.
func TestRegionSessionBindingsGoUp(t *testing.T) {
	g := startPlane(t, nil)
	proxy := startCutProxy(t, g.SyncAddr())
	east := startPlane(t, func(c *Config) { inRegion("east", proxy.addr())(c); c.VIPIndexMin, c.VIPIndexMax = 100, 199 })
	mustApply(t, east, svcDoc("web", `,"session":{"header":"x-s"}`, 80)) // agents bind sessions only of services that pin them
	a := regionAgent(t, east, "e1", "east", "web/web-e1", "web/web-e2")

	key := "Session/demo/" + api.SessionName("web", "alice")
	a.send(&wire.Message{Type: wire.TypeSessions, Sessions: []api.Session{{Meta: api.Meta{Namespace: "demo"},
		Spec: api.SessionSpec{Service: "web", Key: "alice", Endpoint: "web-e1"}}}})
	waitHeld(t, east, key, "east", nil)
	waitHeld(t, g, key, "east", func(o api.Object) bool { return o.(*api.Session).Spec.Endpoint == "web-e1" })

	// A move at the region (an agent rebinding the session) follows.
	a.send(&wire.Message{Type: wire.TypeSessions, Sessions: []api.Session{{Meta: api.Meta{Namespace: "demo"},
		Spec: api.SessionSpec{Service: "web", Key: "alice", Endpoint: "web-e2"}}}})
	waitHeld(t, g, key, "east", func(o api.Object) bool { return o.(*api.Session).Spec.Endpoint == "web-e2" })

	// The global plane does not change the region's binding.
	code, body := applyDoc(t, g, sessionDoc("alice", "web-e1"))
	if code != http.StatusConflict || !strings.Contains(body, "region east") {
		t.Fatalf("global apply of east's session: %d %s", code, body)
	}

	// Cut off, east's agents go on binding sessions; one name is bound at
	// both sides meanwhile: the global copy wins, east's is audited.
	proxy.setCut(true)
	waitDisconnected(t, east)
	a.send(&wire.Message{Type: wire.TypeSessions, Sessions: []api.Session{
		{Meta: api.Meta{Namespace: "demo"}, Spec: api.SessionSpec{Service: "web", Key: "bob", Endpoint: "web-e1"}},
	}})
	a.send(&wire.Message{Type: wire.TypeSessions, Sessions: []api.Session{
		{Meta: api.Meta{Namespace: "demo"}, Spec: api.SessionSpec{Service: "web", Key: "carol", Endpoint: "web-e1"}},
	}})
	carol := "Session/demo/" + api.SessionName("web", "carol")
	waitHeld(t, east, "Session/demo/"+api.SessionName("web", "bob"), "east", nil)
	waitHeld(t, east, carol, "east", nil)
	mustApply(t, g, sessionDoc("carol", "web-e2"))
	proxy.setCut(false)
	waitHeld(t, g, "Session/demo/"+api.SessionName("web", "bob"), "east", nil)
	waitHeld(t, east, carol, "", func(o api.Object) bool { return o.(*api.Session).Spec.Endpoint == "web-e2" })
	waitHeld(t, g, carol, "", func(o api.Object) bool { return o.(*api.Session).Spec.Endpoint == "web-e2" })
	testenv.WaitFor(t, 10*time.Second, "east to audit the dropped copy of "+carol, func() bool { return hasConflict(east, carol) })
}

func waitDisconnected(t *testing.T, s *Server) {
	t.Helper()
	testenv.WaitFor(t, 10*time.Second, s.cfg.Region+" to see its upstream link down", func() bool { return !s.Upstream().Connected })
}

// svcDocs is one multi-document apply of n services named prefix-i.
func svcDocs(prefix string, n, port int) string {
	docs := make([]string, n)
	for i := range docs {
		docs[i] = fmt.Sprintf("apiVersion: fogmesh.io/v1alpha1\nkind: Service\nmetadata: {name: %s-%d, namespace: demo}\nspec:\n  ports: [{name: tcp, port: %d}]\n", prefix, i, port+i)
	}
	return strings.Join(docs, "\n---\n")
}

// TestRegionLinkChunks: with a chunk bound far below a snapshot, both
// directions of a region link send snapshots and large deltas in chunks,
// no frame larger than about one chunk, and both sides take them whole.
func TestRegionLinkChunks(t *testing.T) {
	limits := syncproto.Limits{ChunkBytes: 1024, ChunkItems: 3, MaxChunks: 100, MaxUpdateBytes: 1 << 20}
	const n = 12 // services of about 300 bytes each: 3.6 KiB a snapshot
	g := startPlane(t, func(c *Config) { c.regionLimits = limits })
	mustApply(t, g, svcDocs("g", n, 1000))
	proxy := startCutProxy(t, g.SyncAddr())
	proxy.setCut(true)
	east := startPlane(t, func(c *Config) {
		inRegion("east", proxy.addr())(c)
		c.VIPIndexMin, c.VIPIndexMax, c.regionLimits = 100, 199, limits
	})
	mustApply(t, east, svcDocs("e", n, 2000))
	proxy.setCut(false)
	for i := range n {
		waitHeld(t, east, fmt.Sprintf("Service/demo/g-%d", i), "", nil)
		waitHeld(t, g, fmt.Sprintf("Service/demo/e-%d", i), "east", nil)
	}
	// A large delta each way: one commit of n services.
	mustApply(t, g, svcDocs("g2", n, 3000))
	mustApply(t, east, svcDocs("e2", n, 4000))
	for i := range n {
		waitHeld(t, east, fmt.Sprintf("Service/demo/g2-%d", i), "", nil)
		waitHeld(t, g, fmt.Sprintf("Service/demo/e2-%d", i), "east", nil)
	}
	for _, s := range []*Server{g, east} {
		if s.mChunks.Get() < 8 {
			t.Errorf("%s sent %d chunk frames, want at least 8 (two updates of 4 chunks)", s.cfg.Mode, s.mChunks.Get())
		}
		if max := s.maxFrame.Load(); max > 2*int64(limits.ChunkBytes) {
			t.Errorf("%s wrote a frame of %d bytes, over twice the chunk bound %d", s.cfg.Mode, max, limits.ChunkBytes)
		}
	}
	if east.up.snapshots() != 1 {
		t.Errorf("east applied %d snapshots, want 1", east.up.snapshots())
	}
}
