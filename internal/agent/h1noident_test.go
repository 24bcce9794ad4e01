package agent

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/httpproxy"
)

// TestH1ClientIdentityNeverForwarded: a client the agent has no identity
// for (its address is no workload's: forward sets no identity header of
// its own, so nothing overwrites a client's) sends the identity header in
// every spelling the fast path can meet: lean heads the scrub would skip
// if they were clean (canonical, lower- and upper-case, duplicates, '_'
// for '-', named in Connection, after a clean head on one connection), a
// head http.ReadRequest reads (a body), one with an obs-fold line. None
// reaches the endpoint under any spelling (review h32/rev3 of 7dc0b9b,
// which dropped forward's delete of the header on the ground that the
// scrub, or a clean lean head, leaves it out). Heads net/http refuses
// (whitespace before the colon) get a 400 and reach nobody.
func TestH1ClientIdentityNeverForwarded(t *testing.T) {
	be := startCaptureBackend(t, nil)
	addr := agentInFront(t, inFront{node: "ni", octet: 241, svc: "noid", vipPort: 19341, port: be.port()}).addr
	be.take()
	// 127.241.77.1: inside the range this review may use, no workload's.
	src := &net.TCPAddr{IP: net.ParseIP("127.241.77.1")}
	exchange := func(raw string) string {
		t.Helper()
		d := net.Dialer{LocalAddr: src, Timeout: 5 * time.Second}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, raw); err != nil {
			t.Fatal(err)
		}
		out, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("reading the answer to %q: %v (got %q)", raw, err, out)
		}
		return string(out)
	}
	const evil = "spiffe://fogmesh.local/ns/demo/sa/admin"
	heads := []string{
		"GET /clean HTTP/1.1\r\nHost: noid\r\nX-A: a\r\n\r\n",
		"GET /canonical HTTP/1.1\r\nHost: noid\r\nX-Fogmesh-Source-Id: " + evil + "\r\n\r\n",
		"GET /lower HTTP/1.1\r\nHost: noid\r\nx-fogmesh-source-id: " + evil + "\r\n\r\n",
		"GET /upper HTTP/1.1\r\nHost: noid\r\nX-FOGMESH-SOURCE-ID: " + evil + "\r\nX-B: b\r\n\r\n",
		"GET /dup HTTP/1.1\r\nHost: noid\r\nX-Fogmesh-Source-Id: " + evil + "\r\nx-FogMesh-source-ID: " + evil + "\r\n\r\n",
		"GET /underscore HTTP/1.1\r\nHost: noid\r\nX_Fogmesh_Source_Id: " + evil + "\r\n\r\n",
		"GET /mixed HTTP/1.1\r\nHost: noid\r\nx_FOGMESH-source_ID: " + evil + "\r\n\r\n",
		"GET /connection HTTP/1.1\r\nHost: noid\r\nConnection: X-Fogmesh-Source-Id\r\nX-Fogmesh-Source-Id: " + evil + "\r\n\r\n",
		"GET /ows HTTP/1.1\r\nHost: noid\r\nX-Fogmesh-Source-Id:\t " + evil + " \t\r\n\r\n",
		"GET /lf HTTP/1.1\nHost: noid\nX-Fogmesh-Source-Id: " + evil + "\n\n",
		"GET /fold HTTP/1.1\r\nHost: noid\r\nX-A: a\r\n X-Fogmesh-Source-Id: " + evil + "\r\n\r\n",
		"POST /body HTTP/1.1\r\nHost: noid\r\nContent-Length: 2\r\nX-Fogmesh-Source-Id: " + evil + "\r\nx_fogmesh_source_id: " + evil + "\r\n\r\nab",
		"GET /after HTTP/1.1\r\nHost: noid\r\nX-Fogmesh-Source-Id: " + evil + "\r\nConnection: close\r\n\r\n",
	}
	if out := exchange(strings.Join(heads, "")); strings.Count(out, "HTTP/1.1 200 ") != len(heads) {
		t.Fatalf("%d responses of 200, want %d: %q", strings.Count(out, "HTTP/1.1 200 "), len(heads), out)
	}
	// One at a time too: each a connection's first request.
	for _, h := range heads {
		if out := exchange(strings.Replace(h, "Host: noid", "Connection: close\r\nHost: noid", 1)); !strings.HasPrefix(out, "HTTP/1.1 200 ") {
			t.Fatalf("%q: %q", h, out)
		}
	}
	for _, bad := range []string{
		"GET /space HTTP/1.1\r\nHost: noid\r\nX-Fogmesh-Source-Id : " + evil + "\r\n\r\n",
		"GET /tab HTTP/1.1\r\nHost: noid\r\nX-Fogmesh-Source-Id\t: " + evil + "\r\n\r\n",
		"GET /leading HTTP/1.1\r\nHost: noid\r\n X-Fogmesh-Source-Id: " + evil + "\r\n\r\n",
	} {
		if out := exchange(bad); !strings.HasPrefix(out, "HTTP/1.1 400 ") {
			t.Errorf("%q: %q, want a 400", bad, out)
		}
	}
	raw, reqs := be.take()
	if want := 2 * len(heads); len(reqs) != want {
		t.Fatalf("%d requests at the endpoint, want %d", len(reqs), want)
	}
	for _, r := range reqs {
		for k, vv := range r.header {
			if httpproxy.EqualFoldDash(k, SourceIDHeader) {
				t.Errorf("%s: the client's identity reached the endpoint: %q: %q", r.target, k, vv)
			}
		}
		if r.target == "/space" || r.target == "/tab" || r.target == "/leading" {
			t.Errorf("%s: a head net/http refuses reached the endpoint", r.target)
		}
	}
	// Whatever the endpoint's parser makes of it: no line of the bytes it
	// got starts with the name in any spelling.
	for _, line := range strings.Split(raw, "\n") {
		if name, _, ok := strings.Cut(strings.TrimLeft(line, " \t"), ":"); ok && httpproxy.EqualFoldDash(strings.TrimSpace(name), SourceIDHeader) {
			t.Errorf("the endpoint got the line %q", line)
		}
	}
}
