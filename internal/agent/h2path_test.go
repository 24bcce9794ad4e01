package agent

import (
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"regexp"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/testenv/grpcsvc"
)

// The HTTP/2 path through one agent (h2up upstream, buffered reads),
// with real clients: grpc-go and h2load.

// waitVIP waits until the agent listens on addr.
func waitVIP(t *testing.T, addr string) {
	t.Helper()
	waitFor(t, "VIP listener "+addr, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
}

// TestGRPCThroughOneAgent: grpc-go through one agent (a port declared
// grpc) to a node-local endpoint: unary with headers and trailers, an
// error status, messages past every flow-control window, client, server
// and bidirectional streaming (ping-pong: a message the agent held back
// would stall it), and a cancelled stream reaching the server
// (grpcsvc.Exercise).
func TestGRPCThroughOneAgent(t *testing.T) {
	s := grpcsvc.Start(t)
	_, port, _ := net.SplitHostPort(s.Addr)
	var p int
	fmt.Sscan(port, &p)
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, httpSvcDoc("gsvc", 19401, "grpc"))
	a := startAgent(t, agentOpts{name: "g1", site: "s1", region: "r1", vipOctet: 207, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir(), workloads: []Workload{webWorkload("gsvc", "gsvc-1", p)}})
	waitFor(t, "endpoint", func() bool { return len(endpointsOf(a, "demo/gsvc")) == 1 })
	waitVIP(t, "127.207.0.1:19401")
	grpcsvc.Exercise(t, "127.207.0.1:19401", s)
}

// TestH2LoadThroughOneAgent: h2load (nghttp2) sends 2,000 requests over 2
// connections, 10 streams each, through one agent (a port declared
// http2) to an h2c endpoint: every one is answered 200.
func TestH2LoadThroughOneAgent(t *testing.T) {
	h2load := testenv.NeedTool(t, "h2load")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor != 2 {
			http.Error(w, "want HTTP/2", http.StatusHTTPVersionNotSupported)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		w.Write([]byte("ok"))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, httpSvcDoc("hsvc", 19402, "http2"))
	a := startAgent(t, agentOpts{name: "h1", site: "s1", region: "r1", vipOctet: 182, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir(), workloads: []Workload{webWorkload("hsvc", "hsvc-1", ln.Addr().(*net.TCPAddr).Port)}})
	waitFor(t, "endpoint", func() bool { return len(endpointsOf(a, "demo/hsvc")) == 1 })
	waitVIP(t, "127.182.0.1:19402")
	out, err := exec.Command(h2load, "-n", "2000", "-c", "2", "-m", "10", "-t", "1", "http://127.182.0.1:19402/").CombinedOutput()
	if err != nil {
		t.Fatalf("h2load: %v\n%s", err, out)
	}
	if !regexp.MustCompile(`requests: 2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed, 0 errored`).Match(out) ||
		!regexp.MustCompile(`status codes: 2000 2xx`).Match(out) {
		t.Fatalf("h2load through the agent:\n%s", out)
	}
}
