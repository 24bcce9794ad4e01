package agent

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/fogmesh/fogmesh/internal/transport"
)

// countingBackend is a loopback HTTP/1.1 backend that knows which of its
// connections are busy: accepted or serving a request, not idle in a pool.
type countingBackend struct {
	port int

	mu       sync.Mutex
	state    map[net.Conn]http.ConnState
	accepted int
}

func startCounting(t *testing.T, h http.Handler) *countingBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &countingBackend{port: ln.Addr().(*net.TCPAddr).Port, state: map[net.Conn]http.ConnState{}}
	srv := &http.Server{Handler: h, ConnState: func(c net.Conn, s http.ConnState) {
		b.mu.Lock()
		defer b.mu.Unlock()
		switch s {
		case http.StateNew:
			b.accepted++
			b.state[c] = s
		case http.StateClosed, http.StateHijacked:
			delete(b.state, c)
		default:
			b.state[c] = s
		}
	}}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return b
}

func (b *countingBackend) counts() (accepted, busy int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, s := range b.state {
		if s == http.StateNew || s == http.StateActive {
			busy++
		}
	}
	return b.accepted, busy
}

// waitListening waits until addr accepts TCP connections (no request is
// sent, so no upstream connection is opened).
func waitListening(t testing.TB, addr string) {
	t.Helper()
	waitFor(t, "listener "+addr, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// slowClient sends a request head declaring a 100000-byte body and one
// byte of it, then nothing; answer returns what it gets back (or an
// error) once the agent gives up on it.
type slowClient struct {
	c      net.Conn
	answer chan string
}

func startSlowClient(t *testing.T, addr, proto string) *slowClient {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "POST /upload %s\r\nHost: slow\r\nContent-Length: 100000\r\n\r\nA", proto)
	sc := &slowClient{c: c, answer: make(chan string, 1)}
	go func() {
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			line = "error: " + err.Error()
		}
		sc.answer <- strings.TrimSpace(line)
	}()
	return sc
}

// TestSlowRequestBodyReleasesUpstream: 20 clients each declare a 100000
// byte body, send one byte and stall. Whether the request timeout (300 ms)
// or the body timeout (300 ms between reads, no request timeout) bounds
// them, on the HTTP/1.1 fast path, the net/http server path (HTTP/1.0)
// and h2c, the upstream connections they made the agent open are closed
// within the bound and the clients get 408. (Before: the fast path read
// bodies with no deadline, and held the upstream connections for ever.)
func TestSlowRequestBodyReleasesUpstream(t *testing.T) {
	const n = 20
	readAll := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "ok")
	})
	reqB, gapB := startCounting(t, readAll), startCounting(t, readAll)
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: sbreq, namespace: demo}
spec:
  ports: [{name: web, port: 19431, protocol: http}]
  timeouts: {request: 300ms}
---
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: sbgap, namespace: demo}
spec:
  ports: [{name: web, port: 19432, protocol: http}]
  timeouts: {requestBody: 300ms}
`)
	a := startAgent(t, agentOpts{name: "sb", site: "s1", region: "r1", vipOctet: 226, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{webWorkload("sbreq", "sbreq-1", reqB.port), webWorkload("sbgap", "sbgap-1", gapB.port)}})
	waitFor(t, "endpoints", func() bool { return len(endpointsOf(a, "demo/sbreq")) == 1 && len(endpointsOf(a, "demo/sbgap")) == 1 })
	services := []struct {
		name, addr string
		b          *countingBackend
	}{{"request timeout", "127.226.0.1:19431", reqB}, {"body timeout", "127.226.0.2:19432", gapB}}
	for _, svc := range services {
		waitListening(t, svc.addr)
	}

	// released waits until n more upstream connections were opened and
	// then until none is busy, and says how long the second took.
	released := func(t *testing.T, b *countingBackend, before int) time.Duration {
		t.Helper()
		waitFor(t, "upstream connections opened", func() bool { acc, _ := b.counts(); return acc >= before+n })
		start := time.Now()
		deadline := start.Add(5 * time.Second) // the bound is 300 ms; slack for a busy machine
		for {
			_, busy := b.counts()
			if busy == 0 {
				return time.Since(start)
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d upstream connections still held %v after the slow clients connected", busy, time.Since(start))
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	for _, svc := range services {
		for _, proto := range []string{"HTTP/1.1", "HTTP/1.0"} { // fast path; net/http server
			t.Run(svc.name+" "+proto, func(t *testing.T) {
				before, _ := svc.b.counts()
				var cs []*slowClient
				for range n {
					cs = append(cs, startSlowClient(t, svc.addr, proto))
				}
				took := released(t, svc.b, before)
				for _, c := range cs {
					if got := <-c.answer; !strings.Contains(got, " 408 ") {
						t.Fatalf("slow client got %q; want 408", got)
					}
				}
				t.Logf("%d upstream connections released %v after the last was opened", n, took)
			})
		}
		t.Run(svc.name+" h2c", func(t *testing.T) {
			var protos http.Protocols
			protos.SetUnencryptedHTTP2(true)
			hc := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{Protocols: &protos}}
			defer hc.CloseIdleConnections()
			before, _ := svc.b.counts()
			codes := make(chan int, n)
			var writers []*io.PipeWriter
			for range n {
				pr, pw := io.Pipe()
				writers = append(writers, pw)
				req, _ := http.NewRequest("POST", "http://"+svc.addr+"/upload", pr)
				req.ContentLength = 100000
				go func() {
					resp, err := hc.Do(req)
					if err != nil {
						codes <- -1
						return
					}
					resp.Body.Close()
					codes <- resp.StatusCode
				}()
				go pw.Write([]byte("A")) // then nothing
			}
			defer func() {
				for _, pw := range writers {
					pw.Close()
				}
			}()
			took := released(t, svc.b, before)
			for range n {
				if code := <-codes; code != http.StatusRequestTimeout {
					t.Fatalf("slow h2c stream got %d; want 408", code)
				}
			}
			t.Logf("%d upstream connections released %v after the last was opened", n, took)
		})
	}
	// The slow clients' failures are theirs: no endpoint is ejected.
	for _, svc := range []string{"demo/sbreq", "demo/sbgap"} {
		if eps := endpointsOf(a, svc); len(eps) != 1 || eps[0].Ejected {
			t.Errorf("%s after slow clients: %+v; want its endpoint not ejected", svc, eps)
		}
	}
	var buf strings.Builder
	a.cfg.Metrics.WritePrometheus(&buf)
	if !strings.Contains(buf.String(), "fogmesh_agent_request_body_timeouts_total ") {
		t.Error("no fogmesh_agent_request_body_timeouts_total")
	}
	// A body that keeps coming is not cut off by the body timeout.
	c, err := net.Dial("tcp", services[1].addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// 30 bytes 20 ms apart: twice the timeout in all, a fifteenth of it
	// between two (a loaded machine may delay a write by far more than 20 ms).
	fmt.Fprintf(c, "POST /upload HTTP/1.1\r\nHost: slow\r\nContent-Length: 30\r\n\r\n")
	for range 30 {
		time.Sleep(20 * time.Millisecond) // the pace of the client under test, not synchronisation
		c.Write([]byte("x"))
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("a body sent a byte per 20 ms under a 300 ms body timeout: %v %v %+v", resp, err, endpointsOf(a, "demo/sbgap"))
	}
}

// streamBackend answers /stream with a first line at once and the rest
// when release is closed (or the request ends), and anything else with "ok".
func streamBackend(t *testing.T) (port int, release func()) {
	t.Helper()
	done := make(chan struct{})
	var once sync.Once
	b := startCounting(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") == "echo" {
			c, bw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer c.Close()
			bw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
			bw.Flush()
			io.Copy(c, c)
			return
		}
		if r.URL.Path != "/stream" {
			io.WriteString(w, "ok")
			return
		}
		io.WriteString(w, "first\n")
		w.(http.Flusher).Flush()
		select {
		case <-done:
		case <-r.Context().Done():
		}
		io.WriteString(w, "last\n")
	}))
	t.Cleanup(func() { once.Do(func() { close(done) }) })
	return b.port, func() { once.Do(func() { close(done) }) }
}

// openStream starts GET /stream and returns its response once the first
// line has arrived (the response header is long past).
func openStream(t *testing.T, c *http.Client, url string) *http.Response {
	t.Helper()
	resp, err := c.Get(url + "/stream")
	if err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(io.LimitReader(resp.Body, 6)).ReadString('\n')
	if resp.StatusCode != 200 || line != "first\n" {
		t.Fatalf("stream: %s %q %v", resp.Status, line, err)
	}
	return resp
}

// getStatus answers a GET's status and the given response header.
func getStatus(t *testing.T, c *http.Client, url, header string) (int, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get(header)
}

// TestInflightCountsUntilResponseBodyEnds: with circuitBreaker.maxRequests
// 1 (and, on another agent, maxRequests 1, traffic-class shedding), a
// response still streaming holds the only slot: a second request is
// refused 503 on the HTTP/1.1 fast path and on the ReverseProxy path
// (h2c), and served once the stream has ended. (Before: the slot was
// released when the response header arrived.)
func TestInflightCountsUntilResponseBodyEnds(t *testing.T) {
	cbPort, cbRelease := streamBackend(t)
	shedPort, shedRelease := streamBackend(t)
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: ifcb, namespace: demo}
spec:
  ports: [{name: web, port: 19433, protocol: http}]
  circuitBreaker: {maxRequests: 1}
---
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: ifshed, namespace: demo}
spec:
  ports: [{name: web, port: 19434, protocol: http}]
---
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: ifgrpc, namespace: demo}
spec:
  ports: [{name: web, port: 19435, protocol: grpc}]
  circuitBreaker: {maxRequests: 1}
`)
	gln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go gs.Serve(gln)
	t.Cleanup(gs.Stop)
	ctl := []string{cp.SyncAddr()}
	cbAgent := startAgent(t, agentOpts{name: "ifa", site: "s1", region: "r1", vipOctet: 227, control: ctl, stateDir: t.TempDir(),
		workloads: []Workload{webWorkload("ifcb", "ifcb-1", cbPort), webWorkload("ifgrpc", "ifgrpc-1", gln.Addr().(*net.TCPAddr).Port)}})
	shedAgent := startAgent(t, agentOpts{name: "ifb", site: "s1", region: "r1", vipOctet: 228, control: ctl, stateDir: t.TempDir(),
		maxRequests: 1, workloads: []Workload{webWorkload("ifshed", "ifshed-1", shedPort)}})
	waitFor(t, "endpoints", func() bool {
		return len(endpointsOf(cbAgent, "demo/ifcb")) == 1 && len(endpointsOf(cbAgent, "demo/ifgrpc")) == 1 &&
			len(endpointsOf(shedAgent, "demo/ifshed")) == 1
	})
	var h2 http.Protocols
	h2.SetUnencryptedHTTP2(true)
	clients := []struct {
		name string
		c    *http.Client
	}{
		{"h2c", &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Protocols: &h2}}},
		{"HTTP/1.1", &http.Client{Timeout: 10 * time.Second}},
	}
	cases := []struct {
		name, url, header string
		release           func()
	}{
		{"circuit breaker", "http://127.227.0.1:19433", "X-Fogmesh-Overflow", cbRelease},
		{"shedding", "http://127.228.0.2:19434", "X-Fogmesh-Shed", shedRelease},
	}
	for _, cs := range cases {
		waitListening(t, strings.TrimPrefix(cs.url, "http://"))
		// Each client ends a stream (h2c: RST_STREAM; HTTP/1.1: closes
		// its connection, which the fast path must notice although the
		// stream is silent); then the backend ends one.
		for _, end := range []string{"client", "backend"} {
			for _, cl := range clients {
				if end == "backend" && cl.name != "HTTP/1.1" {
					continue
				}
				t.Run(cs.name+" "+cl.name+" "+end+" ends", func(t *testing.T) {
					resp := openStream(t, cl.c, cs.url)
					defer resp.Body.Close()
					if code, h := getStatus(t, cl.c, cs.url+"/ok", cs.header); code != 503 || h != "true" {
						t.Fatalf("a second request while the only slot's response streams: %d (%s %q); want 503", code, cs.header, h)
					}
					if end == "backend" {
						cs.release()
						rest, err := io.ReadAll(resp.Body)
						if err != nil || string(rest) != "last\n" {
							t.Fatalf("rest of the stream: %q %v", rest, err)
						}
					} else {
						resp.Body.Close()
					}
					waitFor(t, "a request served after the stream ended", func() bool {
						code, _ := getStatus(t, cl.c, cs.url+"/ok", cs.header)
						return code == 200
					})
				})
			}
		}
	}

	// An upgraded connection holds the slot until it is closed.
	t.Run("circuit breaker upgrade", func(t *testing.T) {
		c, err := net.Dial("tcp", "127.227.0.1:19433")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: ifcb\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade: %v %v", resp, err)
		}
		io.WriteString(c, "ping")
		b := make([]byte, 4)
		if _, err := io.ReadFull(br, b); err != nil || string(b) != "ping" {
			t.Fatalf("echo over the upgraded connection: %q %v", b, err)
		}
		hc := &http.Client{Timeout: 10 * time.Second}
		if code, h := getStatus(t, hc, "http://127.227.0.1:19433/ok", "X-Fogmesh-Overflow"); code != 503 || h != "true" {
			t.Fatalf("a request while the only slot is an upgraded connection: %d (%q); want 503", code, h)
		}
		c.Close()
		waitFor(t, "a request served after the upgraded connection closed", func() bool {
			code, _ := getStatus(t, hc, "http://127.227.0.1:19433/ok", "")
			return code == 200
		})
	})
	// A gRPC server stream (health Watch) holds the slot too: a unary call
	// meanwhile gets UNAVAILABLE, and succeeds once the stream is cancelled.
	t.Run("circuit breaker grpc", func(t *testing.T) {
		waitListening(t, "127.227.0.3:19435")
		conn, err := grpc.NewClient("127.227.0.3:19435", grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		hc := healthpb.NewHealthClient(conn)
		wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer wcancel()
		stream, err := hc.Watch(wctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); err != nil {
			t.Fatal(err)
		}
		check := func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
			return err
		}
		if err := check(); status.Code(err) != codes.Unavailable {
			t.Fatalf("a unary call while the only slot's stream is open: %v; want UNAVAILABLE", err)
		}
		wcancel()
		waitFor(t, "a call served after the stream was cancelled", func() bool { return check() == nil })
	})
}

// perClientCapAgent starts an agent with maxRequestsPerClient 3 in front
// of a counting backend whose /stream answers its first line at once and
// its last after release; it answers the agent, the backend, the service's
// address (on VIP octet) and release.
func perClientCapAgent(t *testing.T, name string, port, octet int) (*Agent, *countingBackend, string, func()) {
	done := make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(done) }) }
	t.Cleanup(release)
	b := startCounting(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/stream" {
			io.WriteString(w, "first\n")
			w.(http.Flusher).Flush()
			select {
			case <-done:
			case <-r.Context().Done():
			}
		}
		io.WriteString(w, "last\n")
	}))
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, httpSvcDoc(name, port, "http"))
	a := startAgentWith(t, agentOpts{name: name, site: "s1", region: "r1", vipOctet: octet, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{webWorkload(name, name+"-1", b.port)}}, func(c *Config) { c.MaxRequestsPerClient = 3 })
	waitFor(t, "endpoint", func() bool { return len(endpointsOf(a, "demo/"+name)) == 1 })
	addr := fmt.Sprintf("127.%d.0.1:%d", octet, port)
	waitListening(t, addr)
	return a, b, addr, release
}

// TestPerClientRequestCap: with maxRequestsPerClient 3, a client (source
// address 127.0.0.1) holding 3 streaming responses gets 429 for a 4th
// request, while another client (127.0.0.2) is served; once the streams
// end the first client is served again, and the upstream connections it
// held never exceeded its cap.
func TestPerClientRequestCap(t *testing.T) {
	a, b, addr, release := perClientCapAgent(t, "pcc", 19436, 229)
	from := func(src string) *http.Client {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: d.DialContext}}
	}
	one, other := from("127.0.0.1"), from("127.0.0.2")
	var streams []*http.Response
	for range 3 {
		streams = append(streams, openStream(t, one, "http://"+addr))
	}
	defer func() {
		for _, r := range streams {
			r.Body.Close()
		}
	}()
	if code, _ := getStatus(t, one, "http://"+addr+"/ok", ""); code != http.StatusTooManyRequests {
		t.Fatalf("a 4th request from a client holding 3 (its cap): %d; want 429", code)
	}
	if code, _ := getStatus(t, other, "http://"+addr+"/ok", ""); code != 200 {
		t.Fatalf("another client meanwhile: %d; want 200", code)
	}
	waitFor(t, "3 upstream connections busy (the streams)", func() bool { _, busy := b.counts(); return busy == 3 })
	release()
	for _, r := range streams {
		if rest, err := io.ReadAll(r.Body); err != nil || string(rest) != "last\n" {
			t.Fatalf("rest of a stream: %q %v", rest, err)
		}
	}
	waitFor(t, "the client served again", func() bool { code, _ := getStatus(t, one, "http://"+addr+"/ok", ""); return code == 200 })
	var buf strings.Builder
	a.cfg.Metrics.WritePrometheus(&buf)
	if want := `fogmesh_agent_client_limit_rejections_total{service="demo/pcc"} 1`; !strings.Contains(buf.String(), want) {
		t.Errorf("metrics lack %s", want)
	}
}

// TestSlowBodyFromPeerIsBounded: the destination agent bounds a request
// body that a peer node sends over a mesh stream (requests authorized one
// by one), as the source agent bounds its client's: with
// timeouts.requestBody 300ms, a peer that sends one byte of a 100000-byte
// body gets 408 and the workload connection is released.
func TestSlowBodyFromPeerIsBounded(t *testing.T) {
	b := startCounting(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "ok")
	}))
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: sbpeer, namespace: demo}
spec:
  ports: [{name: web, port: 19437, protocol: http}]
  timeouts: {requestBody: 300ms}
---
apiVersion: fogmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: sbpeer-post, namespace: demo}
spec: {service: sbpeer, rules: [{to: [{methods: [POST]}]}]}
`)
	a := startAgent(t, agentOpts{name: "sbd", site: "s1", region: "r1", vipOctet: 230, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{webWorkload("sbpeer", "sbpeer-1", b.port)}})
	// With the policy, the agent serves the peer's streams per request (an
	// insecure agent without one relays bytes).
	waitFor(t, "endpoint and policy", func() bool { return len(endpointsOf(a, "demo/sbpeer")) == 1 && a.view.Load().authz.Len() == 1 })
	mc := transport.NewClient(transport.ClientConfig{SourceNode: "peer"})
	defer mc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const n = 5
	var answers []chan string
	for range n {
		s, err := mc.Dial(ctx, a.MeshAddr(), transport.Header{Namespace: "demo", Service: "sbpeer", Endpoint: "sbpeer-1", Port: "web"})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		io.WriteString(s, "POST /upload HTTP/1.1\r\nHost: sbpeer\r\nContent-Length: 100000\r\n\r\nA")
		ch := make(chan string, 1)
		answers = append(answers, ch)
		go func() {
			s.SetReadDeadline(time.Now().Add(20 * time.Second))
			line, err := bufio.NewReader(s).ReadString('\n')
			if err != nil {
				line = "error: " + err.Error()
			}
			ch <- strings.TrimSpace(line)
		}()
	}
	waitFor(t, "workload connections opened", func() bool { acc, _ := b.counts(); return acc >= n })
	waitFor(t, "workload connections released", func() bool { _, busy := b.counts(); return busy == 0 })
	for _, ch := range answers {
		if got := <-ch; !strings.Contains(got, " 408 ") {
			t.Fatalf("peer's slow body got %q; want 408", got)
		}
	}
}

// TestSlowReaderReleasesUpstream: clients that never read a large
// response (a 4 KiB receive buffer, no reads) are cut off after the
// service's send timeout (300 ms) on the HTTP/1.1 fast path, the net/http
// server path (HTTP/1.0) and h2c (the stream's flow control), and the
// upstream connections streaming to them are released; a client that
// reads gets the whole response.
func TestSlowReaderReleasesUpstream(t *testing.T) {
	const n = 5
	chunk := bytes.Repeat([]byte("x"), 32<<10)
	b := startCounting(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mb, _ := strconv.Atoi(r.URL.Query().Get("mb"))
		if mb == 0 {
			mb = 1 << 10 // until the agent gives up (or 1 GiB)
		}
		for range mb * 32 {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}))
	f := agentInFront(t, inFront{node: "sr", octet: 231, svc: "slowread", vipPort: 19438, port: b.port, noRequest: true,
		doc: `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: slowread, namespace: demo}
spec:
  ports: [{name: web, port: 19438, protocol: http}]
  timeouts: {send: 300ms}
`})
	a, addr := f.agent, f.addr
	small := &net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		return errors.Join(err, serr)
	}}
	released := func(t *testing.T, before int) {
		t.Helper()
		waitFor(t, "upstream connections opened", func() bool { acc, _ := b.counts(); return acc >= before+n })
		waitFor(t, "upstream connections released", func() bool { _, busy := b.counts(); return busy == 0 })
	}
	for _, proto := range []string{"HTTP/1.1", "HTTP/1.0"} {
		t.Run(proto, func(t *testing.T) {
			before, _ := b.counts()
			for range n {
				c, err := small.Dial("tcp", addr)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				fmt.Fprintf(c, "GET /big %s\r\nHost: slowread\r\n\r\n", proto)
			}
			released(t, before)
		})
	}
	t.Run("h2c", func(t *testing.T) {
		var protos http.Protocols
		protos.SetUnencryptedHTTP2(true)
		hc := &http.Client{Transport: &http.Transport{Protocols: &protos}}
		defer hc.CloseIdleConnections()
		before, _ := b.counts()
		for range n {
			resp, err := hc.Get("http://" + addr + "/big")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close() // read nothing
		}
		released(t, before)
	})
	var buf strings.Builder
	a.cfg.Metrics.WritePrometheus(&buf)
	if !strings.Contains(buf.String(), "fogmesh_agent_send_timeouts_total ") || strings.Contains(buf.String(), "fogmesh_agent_send_timeouts_total 0\n") {
		t.Error("no send timeout counted")
	}
	// A client that reads gets all of a large response.
	resp, err := http.Get("http://" + addr + "/big?mb=8")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if got, err := io.Copy(io.Discard, resp.Body); err != nil || got != 8<<20 {
		t.Fatalf("a reading client got %d bytes, %v; want 8 MiB", got, err)
	}
}
