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

// TestSessionMoveNeedsItsTarget (issue 16): `fogmesh session move`
// applies a Session; one naming a service or an endpoint that does not
// exist, or an endpoint of another service, is refused with 400 and a
// message that says what exists, and nothing is stored.
func TestSessionMoveNeedsItsTarget(t *testing.T) {
	s := startServer(t, t.TempDir())
	const eps = `{"apiVersion":"fogmesh.io/v1alpha1","kind":"List","items":[
	{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"hello","namespace":"demo"},"spec":{"ports":[{"name":"http","port":8080}]}},
	{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"other","namespace":"demo"},"spec":{"ports":[{"name":"http","port":8080}]}},
	{"apiVersion":"fogmesh.io/v1alpha1","kind":"Endpoint","metadata":{"name":"hello-1","namespace":"demo"},"spec":{"service":"hello","address":"127.0.0.1","ports":[{"name":"http","port":1}]}},
	{"apiVersion":"fogmesh.io/v1alpha1","kind":"Endpoint","metadata":{"name":"hello-2","namespace":"demo"},"spec":{"service":"hello","address":"127.0.0.1","ports":[{"name":"http","port":2}]}},
	{"apiVersion":"fogmesh.io/v1alpha1","kind":"Endpoint","metadata":{"name":"other-1","namespace":"demo"},"spec":{"service":"other","address":"127.0.0.1","ports":[{"name":"http","port":3}]}}]}`
	if code, body := applyDoc(t, s, eps); code != http.StatusOK {
		t.Fatalf("apply: %d %s", code, body)
	}
	session := func(ns, svc, ep string) string {
		return `{"apiVersion":"fogmesh.io/v1alpha1","kind":"Session","metadata":{"namespace":"` + ns + `"},"spec":{"service":"` + svc + `","key":"k1","endpoint":"` + ep + `"}}`
	}
	for _, c := range []struct{ doc, want string }{
		{session("demo", "nope", "hello-1"), "service demo/nope does not exist"},
		{session("default", "hello", "hello-1"), "service default/hello does not exist"},
		{session("demo", "hello", "hello-9"), `endpoint hello-9 is not an endpoint of demo/hello (it has: hello-1, hello-2)`},
		{session("demo", "hello", "other-1"), `endpoint other-1 is not an endpoint of demo/hello`},
	} {
		if code, body := applyDoc(t, s, c.doc); code != http.StatusBadRequest || !strings.Contains(body, c.want) {
			t.Errorf("%s: %d %s, want 400 and %q", c.doc, code, body, c.want)
		}
	}
	if objs, _, err := s.reg.list("Session"); err != nil || len(objs) != 0 {
		t.Fatalf("sessions stored: %v %v", objs, err)
	}
	if code, body := applyDoc(t, s, session("demo", "hello", "hello-2")); code != http.StatusOK {
		t.Fatalf("a session to an endpoint of the service: %d %s", code, body)
	}
}

// TestResubscribeAtCurrentVersionIsAcked (issue 16): an agent that
// subscribes holding the current version of this store (what every agent
// does after a restart of the control plane) counts as acked at that
// version at once, not only after it acks an update: the acked version
// lives in memory, and `get nodes` showed CONFIG VERSION 0 until one.
func TestResubscribeAtCurrentVersionIsAcked(t *testing.T) {
	s := startServer(t, t.TempDir())
	if code, body := applyDoc(t, s, helloSvc); code != http.StatusOK {
		t.Fatal(code, body)
	}
	rev, err := s.st.Rev()
	if err != nil {
		t.Fatal(err)
	}
	a := dialAgent(t, s, "n1")
	a.send(&wire.Message{Type: wire.TypeSubscribe, StoreID: s.StoreID(), KnownVersion: rev})
	// No ack is sent: the subscribe itself says what the agent holds.
	testenv.WaitFor(t, 5*time.Second, "n1 acked at the current version", func() bool {
		n := api.Node{Meta: api.Meta{Name: "n1"}}
		s.fillLive(&n)
		return n.Status.AckedVersion == rev
	})
	// One from another store's history is not.
	b := dialAgent(t, s, "n2")
	b.send(&wire.Message{Type: wire.TypeSubscribe, StoreID: "other", KnownVersion: rev})
	if m := b.recv(); !m.Full {
		t.Fatal("foreign store id: want a full snapshot")
	}
	n := api.Node{Meta: api.Meta{Name: "n2"}}
	s.fillLive(&n)
	if n.Status.AckedVersion != 0 {
		t.Fatalf("n2 acked %d before acking anything", n.Status.AckedVersion)
	}
}
