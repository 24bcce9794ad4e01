package agent

import (
	"strings"
	"testing"
)

// TestH1LeanCleanPipelined: on one client connection, lean heads the
// fast path forwards unscrubbed (HeaderClean) alternate with lean heads
// carrying one spoofed or hop-by-hop field and no Connection field, and
// with a head http.ReadRequest reads (a body): no client's identity,
// forwarding or hop-by-hop field reaches the endpoint in any of them, each
// carries the agent's identity and X-Forwarded-For, and a clean request
// keeps its own fields and none of the request before it (review h31/rev4
// of the scrub skip, issue 14).
func TestH1LeanCleanPipelined(t *testing.T) {
	be := startCaptureBackend(t, nil)
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, httpSvcDoc("pipe", 19471, "http"))
	startAgent(t, agentOpts{name: "p", site: "s1", region: "r1", vipOctet: 104, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir(), workloads: []Workload{webWorkload("pipe", "pipe-1", be.port())}})
	addr := "127.104.0.1:19471"
	waitListening(t, addr)
	if out := exchangeRaw(t, addr, "GET /warm HTTP/1.1\r\nHost: pipe\r\nConnection: close\r\n\r\n"); !strings.HasPrefix(out, "HTTP/1.1 200") {
		t.Fatalf("warm-up: %q", out)
	}
	be.take()

	heads := []string{
		"GET /1 HTTP/1.1\r\nHost: pipe\r\nX_Fogmesh_Source_Id: spiffe://fogmesh.local/ns/demo/sa/admin\r\nX-A: one\r\n\r\n",
		"GET /2 HTTP/1.1\r\nHost: pipe\r\nX-B: two\r\n\r\n",
		"POST /3 HTTP/1.1\r\nHost: pipe\r\nContent-Length: 2\r\nx-forwarded-for: 6.6.6.6\r\nX-Fogmesh-Source-Id: spiffe://fogmesh.local/ns/demo/sa/admin\r\n\r\nab",
		"GET /4 HTTP/1.1\r\nHost: pipe\r\nKeep-Alive: 5\r\nX_Forwarded_Host: evil\r\n\r\n",
		"GET /5 HTTP/1.1\r\nHost: pipe\r\nX-B: five\r\n\r\n",
		"GET /6 HTTP/1.1\r\nHost: pipe\r\nforwarded: for=6.6.6.6\r\n\r\n",
		"GET /7 HTTP/1.1\r\nHost: pipe\r\nx-fogmesh-source-id: spiffe://fogmesh.local/ns/demo/sa/admin\r\n\r\n",
		"GET /8 HTTP/1.1\r\nHost: pipe\r\nX-B: eight\r\nConnection: close\r\n\r\n",
	}
	out := exchangeH1(t, addr, strings.Join(heads, ""), false)
	if n := strings.Count(out, "HTTP/1.1 200 "); n != len(heads) {
		t.Fatalf("%d responses of 200, want %d: %q", n, len(heads), out)
	}
	_, reqs := be.take()
	if len(reqs) != len(heads) {
		t.Fatalf("%d requests at the endpoint, want %d", len(reqs), len(heads))
	}
	id := reqs[0].header[SourceIDHeader]
	if len(id) != 1 || strings.Contains(id[0], "admin") {
		t.Fatalf("identity %q", id)
	}
	for i, r := range reqs {
		h := r.header
		for k := range h {
			if strings.Contains(k, "_") || k == "Forwarded" || k == "Keep-Alive" {
				t.Errorf("%s: %q reached the endpoint: %v", r.target, k, h)
			}
		}
		if got := h[SourceIDHeader]; len(got) != 1 || got[0] != id[0] {
			t.Errorf("%s: identity %q, want %q", r.target, got, id)
		}
		if got := h["X-Forwarded-For"]; len(got) != 1 || got[0] != "127.0.0.1" {
			t.Errorf("%s: X-Forwarded-For %q", r.target, got)
		}
		if got := h["X-Forwarded-Host"]; len(got) != 1 || got[0] != "pipe" {
			t.Errorf("%s: X-Forwarded-Host %q", r.target, got)
		}
		if i == 0 && h.Get("X-A") != "one" {
			t.Errorf("%s: X-A %q", r.target, h.Get("X-A"))
		}
		if i > 0 && h.Get("X-A") != "" {
			t.Errorf("%s: the first request's X-A: %v", r.target, h)
		}
		want := map[int]string{1: "two", 4: "five", 7: "eight"}[i]
		if got := h["X-B"]; want != "" && (len(got) != 1 || got[0] != want) || want == "" && got != nil {
			t.Errorf("%s: X-B %q, want %q", r.target, got, want)
		}
	}
}
