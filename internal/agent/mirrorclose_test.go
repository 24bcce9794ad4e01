package agent

import (
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestMirrorAfterCloseStartsNoCopy: the L7 server's handlers are not the
// agent's goroutines (a.wg), and one may outlive the server's 2 s
// Shutdown, and Close. A mirrored request's handler that reached mirror
// then added its copy's goroutine to a.wg during or after Close's Wait
// (WaitGroup misuse: a panic "WaitGroup is reused before previous Wait
// has returned", or a copy sent by a closed agent that nobody waits for).
// Once Close began, mirror drops the copy.
func TestMirrorAfterCloseStartsNoCopy(t *testing.T) {
	primary, _ := startHTTP(t, "v1")
	release := make(chan struct{})
	shadow := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select { // held: a copy stays in flight
		case <-release:
		case <-r.Context().Done():
		}
	})}
	sln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go shadow.Serve(sln)
	t.Cleanup(func() { close(release); shadow.Close() })

	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: mirc, namespace: demo}
spec:
  ports: [{name: web, port: 19128, protocol: http}]
---
apiVersion: fogmesh.io/v1alpha1
kind: DestinationPolicy
metadata: {name: mirc, namespace: demo}
spec:
  service: mirc
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: fogmesh.io/v1alpha1
kind: Route
metadata: {name: mirc, namespace: demo}
spec:
  service: mirc
  rules:
  - backends: [{subset: v1}]
    mirror: {subset: v2}
`)
	w1, w2 := webWorkload("mirc", "mirc-v1", primary), webWorkload("mirc", "mirc-v2", sln.Addr().(*net.TCPAddr).Port)
	w1.Labels, w2.Labels = map[string]string{"version": "v1"}, map[string]string{"version": "v2"}
	a := startAgent(t, agentOpts{name: "mirc", site: "s1", region: "r1", vipOctet: 88, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{w1, w2}})
	var sv *serviceView
	waitFor(t, "the route and its endpoints", func() bool {
		sv = a.view.Load().services["demo/mirc"]
		return len(endpointsOf(a, "demo/mirc")) == 2 && sv != nil && sv.route != nil
	})
	m := sv.route.Spec.Rules[0].Mirror
	target := listenTarget{svc: "demo/mirc", port: "web", proto: "http"}
	lt := &lbTransport{l7: a.l7}
	// While the agent runs, mirror starts a copy (the shadow holds it).
	lt.mirror(httptest.NewRequest("GET", "http://mirc.demo/", nil), sv, target, m, 0)
	if n := a.l7.mirrors.Load(); n != 1 {
		t.Fatalf("%d copies in flight after a mirrored request; want 1", n)
	}

	a.Close() // ends the held copy (Run's context)
	if n := a.l7.mirrors.Load(); n != 0 {
		t.Fatalf("%d copies in flight after Close returned", n)
	}
	before := mirrorResults(a)
	// A handler that outlived Close mirrors its request.
	lt.mirror(httptest.NewRequest("GET", "http://mirc.demo/", nil), sv, target, m, 0)
	// A copy's goroutine counts its result before it leaves the in-flight
	// count: read in this order, a copy started is seen in one or the
	// other.
	inflight := a.l7.mirrors.Load()
	after := mirrorResults(a)
	if inflight != 0 || after != before {
		t.Fatalf("mirror after Close started a copy (%d in flight; results %q, then %q): a goroutine added to the agent's WaitGroup after its Wait",
			inflight, before, after)
	}
}

// mirrorResults is the agent's mirror metrics but "dropped", as text.
func mirrorResults(a *Agent) string {
	var buf strings.Builder
	a.cfg.Metrics.WritePrometheus(&buf)
	var out []string
	for _, l := range strings.Split(buf.String(), "\n") {
		if strings.HasPrefix(l, "fogmesh_http_mirror_requests_total") && !strings.Contains(l, `result="dropped"`) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
