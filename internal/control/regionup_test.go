package control

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
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
	mustApply(t, east, svcDoc("web", "", 80))
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
