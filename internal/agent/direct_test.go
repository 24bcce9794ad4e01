package agent

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
)

// TestDirectStreamsThroughBothAgents: in insecure mode a relayed TCP
// connection to a remote endpoint crosses the mesh on a TCP connection of
// its own (no yamux session): bulk bytes arrive whole and in order, a
// half-close reaches the workload and its answer comes back, and the path
// counts the bytes once the connection closed. With meshDirectStreams
// false the same connection is a stream of the shared session.
func TestDirectStreamsThroughBothAgents(t *testing.T) {
	// The workload reads to EOF, then answers with the byte count and a
	// checksum of what it read, and closes.
	port := serveConns(t, func(c net.Conn) {
		defer c.Close()
		var sum, n uint64
		buf := make([]byte, 64<<10)
		for {
			m, err := c.Read(buf)
			for _, b := range buf[:m] {
				sum = sum*31 + uint64(b)
			}
			n += uint64(m)
			if err != nil {
				break
			}
		}
		fmt.Fprintf(c, "%d %d\n", n, sum)
	}).Port

	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, svcDoc("bulk", 19301))
	wl := Workload{Name: "bulk-a", Service: "bulk", Namespace: "demo", Ports: []api.EndpointPort{{Name: "tcp", Port: port}}}
	startAgent(t, agentOpts{name: "da", site: "s1", region: "r1", vipOctet: 42, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir(), workloads: []Workload{wl}})
	b := startAgent(t, agentOpts{name: "db", site: "s1", region: "r1", vipOctet: 43, control: []string{cp.SyncAddr()}, stateDir: t.TempDir()})
	off := false
	c := startAgentWith(t, agentOpts{name: "dc", site: "s1", region: "r1", vipOctet: 44, control: []string{cp.SyncAddr()}, stateDir: t.TempDir()},
		func(cfg *Config) { cfg.MeshDirectStreams = &off })
	for _, x := range []*Agent{b, c} {
		waitFor(t, x.cfg.Node.Name+" to learn the remote endpoint", func() bool {
			eps := endpointsOf(x, "demo/bulk")
			return len(eps) == 1 && eps[0].Healthy
		})
	}

	payload := make([]byte, 8<<20)
	var want uint64
	for i := range payload {
		payload[i] = byte(i*7 + i>>12)
		want = want*31 + uint64(payload[i])
	}
	send := func(vip string) {
		t.Helper()
		conn, err := net.DialTimeout("tcp", vip, 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := io.Copy(conn, bytes.NewReader(payload)); err != nil {
			t.Fatalf("via %s: write: %v", vip, err)
		}
		if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		answer, err := io.ReadAll(conn)
		if got, wantAnswer := string(answer), fmt.Sprintf("%d %d\n", len(payload), want); err != nil || got != wantAnswer {
			t.Fatalf("via %s: workload answered %q, %v; want %q", vip, got, err, wantAnswer)
		}
	}
	send("127.43.0.1:19301")
	send("127.43.0.1:19301")
	if got := agentMetric(t, b, `fogmesh_mesh_direct_streams_total{dir="out"}`); got != 2 {
		t.Errorf("b opened %v direct streams, want 2", got)
	}
	if got := agentMetric(t, b, `fogmesh_mesh_sessions{dir="out"}`); got != 0 {
		t.Errorf("b has %v yamux sessions, want 0", got)
	}
	waitFor(t, "the path to count the closed streams' bytes", func() bool {
		for _, p := range b.peers.Status().Paths {
			if p.Peer == "da" && p.BytesOut >= 2*uint64(len(payload)) {
				return true
			}
		}
		return false
	})

	send("127.44.0.1:19301")
	if got := agentMetric(t, c, `fogmesh_mesh_direct_streams_total{dir="out"}`); got != 0 {
		t.Errorf("with meshDirectStreams false, c opened %v direct streams", got)
	}
	if got := agentMetric(t, c, `fogmesh_mesh_sessions{dir="out"}`); got != 1 {
		t.Errorf("with meshDirectStreams false, c has %v yamux sessions, want 1", got)
	}
}

// TestIdleTimeoutThroughDirectStream: timeouts.idle holds for a connection
// relayed to a remote endpoint on a direct stream: the client's agent reads
// the idle time of both sockets from the kernel (the stream's socket
// through proxy.TCPWrapper), closes the idle connection after about
// 400ms, and keeps the busy one.
func TestIdleTimeoutThroughDirectStream(t *testing.T) {
	e := startEcho(t, "e1", "127.0.0.1:0")
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, `{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"idlex","namespace":"demo"},
	"spec":{"ports":[{"name":"tcp","port":19302}],"timeouts":{"idle":"400ms"}}}`)
	startAgent(t, agentOpts{name: "ia", site: "s1", region: "r1", vipOctet: 45, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir(), workloads: []Workload{wlFor("idlex", e)}})
	b := startAgent(t, agentOpts{name: "ib", site: "s1", region: "r1", vipOctet: 46, control: []string{cp.SyncAddr()}, stateDir: t.TempDir()})
	waitFor(t, "b to learn the remote endpoint", func() bool {
		eps := endpointsOf(b, "demo/idlex")
		return len(eps) == 1 && eps[0].Healthy
	})
	addr := "127.46.0.1:19302"
	waitFor(t, "listener", func() bool { _, err := roundTrip(addr); return err == nil })
	idleAndBusy(t, addr, "")
	var buf strings.Builder
	b.cfg.Metrics.WritePrometheus(&buf)
	if !strings.Contains(buf.String(), `fogmesh_agent_idle_timeouts_total{service="demo/idlex"} 1`) {
		t.Fatalf("idle close not counted by the client's agent:\n%s", buf.String())
	}
	if !strings.Contains(buf.String(), `fogmesh_mesh_direct_streams_total{dir="out"} 3`) {
		t.Fatalf("the connections did not take direct streams:\n%s", buf.String())
	}
}

// TestHTTPThroughBothAgentsOnDirectStreams: in insecure mode the HTTP
// proxy's pooled upstream connections to a remote endpoint are direct
// streams too (header L7). Requests and their bodies cross them whole, on
// kept-alive connections; the destination agent still takes the source
// agent's X-Forwarded-For from them (the header's L7 flag arrives); and
// with meshDirectStreams false the same requests share a yamux session.
func TestHTTPThroughBothAgentsOnDirectStreams(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%d %s", len(body), r.Header.Get("X-Forwarded-For"))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, httpSvcDoc("webdirect", 19302, "http"))
	startAgent(t, agentOpts{name: "ha", site: "s1", region: "r1", vipOctet: 25, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir(), workloads: []Workload{webWorkload("webdirect", "webdirect-a", ln.Addr().(*net.TCPAddr).Port)}})
	b := startAgent(t, agentOpts{name: "hb", site: "s1", region: "r1", vipOctet: 26, control: []string{cp.SyncAddr()}, stateDir: t.TempDir()})
	off := false
	c := startAgentWith(t, agentOpts{name: "hc", site: "s1", region: "r1", vipOctet: 27, control: []string{cp.SyncAddr()}, stateDir: t.TempDir()},
		func(cfg *Config) { cfg.MeshDirectStreams = &off })
	for _, x := range []*Agent{b, c} {
		waitFor(t, x.cfg.Node.Name+" to learn the remote endpoint", func() bool {
			eps := endpointsOf(x, "demo/webdirect")
			return len(eps) == 1 && eps[0].Healthy
		})
	}

	body := strings.Repeat("0123456789abcdef", 64<<10/16) // 64 KiB
	run := func(url string) {
		t.Helper()
		cl := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxConnsPerHost: 2}}
		defer cl.CloseIdleConnections()
		for i := range 40 {
			var resp *http.Response
			var err error
			if i%2 == 0 {
				resp, err = cl.Get(url)
			} else {
				resp, err = cl.Post(url, "text/plain", strings.NewReader(body))
			}
			if err != nil {
				t.Fatalf("request %d via %s: %v", i, url, err)
			}
			got, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			want := "0 127.0.0.1"
			if i%2 == 1 {
				want = fmt.Sprintf("%d 127.0.0.1", len(body))
			}
			if err != nil || resp.StatusCode != http.StatusOK || string(got) != want {
				t.Fatalf("request %d via %s: %d %q, %v; want 200 %q", i, url, resp.StatusCode, got, err, want)
			}
		}
	}

	run("http://127.26.0.1:19302/")
	if got := agentMetric(t, b, `fogmesh_mesh_direct_streams_total{dir="out"}`); got < 1 {
		t.Errorf("hb carried its HTTP requests on %v direct streams, want some", got)
	}
	if got := agentMetric(t, b, `fogmesh_mesh_sessions{dir="out"}`); got != 0 {
		t.Errorf("hb has %v yamux sessions, want 0", got)
	}

	run("http://127.27.0.1:19302/")
	if got := agentMetric(t, c, `fogmesh_mesh_direct_streams_total{dir="out"}`); got > 0 {
		t.Errorf("with meshDirectStreams false, hc opened %v direct streams", got)
	}
	if got := agentMetric(t, c, `fogmesh_mesh_sessions{dir="out"}`); got != 1 {
		t.Errorf("with meshDirectStreams false, hc has %v yamux sessions, want 1", got)
	}
}
