package agent

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/fogmesh/fogmesh/internal/h2srv"
)

// The waits of an HTTP/2 handler before it detaches (l7h2wait.go): with
// asyncH2 the handlers of one client read's streams run in turn on the
// connection's read loop, and h2srv's take-over (after its inline limit,
// set past the tests' deadlines here) is no longer what frees the streams
// queued behind a handler that waits. In each test stream A's handler
// waits, stream B, sent in the same write, is answered while A still
// waits (before A's answer), and A is answered once its wait ends.

// holdUpstream is an h2c endpoint: /hold waits until release (or the
// request's end), anything else answers its path.
type holdUpstream struct {
	port    int
	holding atomic.Int32
	release func()
}

func startHoldUpstream(t *testing.T) *holdUpstream {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &holdUpstream{port: ln.Addr().(*net.TCPAddr).Port}
	held := make(chan struct{})
	var once sync.Once
	u.release = func() { once.Do(func() { close(held) }) }
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			u.holding.Add(1)
			select {
			case <-held:
			case <-r.Context().Done():
			}
		}
		io.WriteString(w, r.URL.Path)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	t.Cleanup(u.release) // before the server's close: a failed test's holds end
	return u
}

// willWaitAgent starts, with asyncH2 on and h2srv's inline limit past the
// test's deadline, a control plane with doc and an agent (octet 133)
// whose workload svc-1 is u; it returns the service's VIP address once
// ready() holds.
func willWaitAgent(t *testing.T, doc, svc string, vipPort int, u *holdUpstream, tweak func(*Config), ready func(a *Agent, addr string) bool) string {
	was := asyncH2.Swap(true)
	t.Cleanup(func() { asyncH2.Store(was) })
	t.Cleanup(h2srv.SetInlineLimit(time.Hour))
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, doc)
	a := startAgentWith(t, agentOpts{name: "ww" + svc, site: "s1", region: "r1", vipOctet: 133, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir(), workloads: []Workload{webWorkload(svc, svc+"-1", u.port)}}, tweak)
	addr := fmt.Sprintf("127.133.0.1:%d", vipPort)
	waitFor(t, "endpoint", func() bool { return len(endpointsOf(a, "demo/"+svc)) == 1 })
	waitListening(t, addr)
	waitFor(t, "the service's rules", func() bool { return ready(a, addr) })
	return addr
}

// h2cGet is a GET of path on its own HTTP/2 connection: its status, or 0.
func h2cGet(ctx context.Context, addr, path string, header ...string) int {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return 0
	}
	defer c.Close()
	cc, err := (&http2.Transport{AllowHTTP: true}).NewClientConn(c)
	if err != nil {
		return 0
	}
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+path, nil)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := cc.RoundTrip(req)
	if err != nil {
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// rawH2 is a client connection that writes streams' HEADERS together.
type rawH2 struct {
	t  *testing.T
	c  net.Conn
	fr *http2.Framer
}

func dialRawH2(t *testing.T, addr string) *rawH2 {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return &rawH2{t: t, c: c, fr: fr}
}

// send writes the HEADERS (request ended) of streams 1, 3, 5... for the
// requests given as path and header fields, in one write.
func (r *rawH2) send(reqs ...[]string) {
	var buf, block bytes.Buffer
	fr := http2.NewFramer(&buf, nil)
	enc := hpack.NewEncoder(&block)
	for i, fields := range reqs {
		block.Reset()
		for _, f := range []hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "http"},
			{Name: ":authority", Value: "x"}, {Name: ":path", Value: fields[0]}} {
			enc.WriteField(f)
		}
		for j := 1; j+1 < len(fields); j += 2 {
			enc.WriteField(hpack.HeaderField{Name: fields[j], Value: fields[j+1]})
		}
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), BlockFragment: block.Bytes(), EndStream: true, EndHeaders: true})
	}
	if _, err := r.c.Write(buf.Bytes()); err != nil {
		r.t.Fatal(err)
	}
}

// until reads frames until stream id ends and returns its status; the
// test fails if stream not ends first, or at the connection's deadline.
func (r *rawH2) until(id, not uint32) int {
	r.t.Helper()
	status := 0
	for {
		f, err := r.fr.ReadFrame()
		if err != nil {
			r.t.Fatalf("waiting for stream %d's answer: %v", id, err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				r.fr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				r.fr.WritePing(true, f.Data)
			}
		case *http2.MetaHeadersFrame:
			if f.StreamID == id && status == 0 {
				status, _ = strconv.Atoi(f.PseudoValue("status"))
			}
		case *http2.RSTStreamFrame:
			r.t.Fatalf("stream %d reset: %v", f.StreamID, f.ErrCode)
		}
		if f.Header().Flags.Has(http2.FlagHeadersEndStream) && (f.Header().Type == http2.FrameHeaders || f.Header().Type == http2.FrameData) {
			switch f.Header().StreamID {
			case id:
				return status
			case not:
				r.t.Fatalf("stream %d ended before stream %d: its wait held the stream queued behind it", not, id)
			}
		}
	}
}

// queuedAnswered sends a and b together; b must be answered wantB before
// a ends; then release ends a's wait (nil: a is reset) and a is answered
// wantA.
func queuedAnswered(t *testing.T, addr string, a, b []string, wantB int, release func(), wantA int) {
	t.Helper()
	rc := dialRawH2(t, addr)
	rc.send(a, b)
	if got := rc.until(3, 1); got != wantB {
		t.Fatalf("stream B: status %d, want %d", got, wantB)
	}
	if release == nil {
		rc.fr.WriteRSTStream(1, http2.ErrCodeCancel)
		return
	}
	release()
	if got := rc.until(1, 0); got != wantA {
		t.Fatalf("stream A: status %d, want %d", got, wantA)
	}
}

const wwRoute = `---
apiVersion: fogmesh.io/v1alpha1
kind: Route
metadata: {name: %[1]s, namespace: demo}
spec:
  service: %[1]s
  rules:
  - match: [{headers: {x-case: {exact: slow}}}]
    backends: [{}]
    fault: {delay: {fixedDelay: 10m, percent: 100}}
  - match: [{headers: {x-case: {exact: abort}}}]
    backends: [{}]
    fault: {abort: {httpStatus: 418, percent: 100}}
  - backends: [{}]
`

func wwDoc(svc string, port int, extra string) string {
	return fmt.Sprintf(`apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: %[1]s, namespace: demo}
spec:
  ports: [{name: web, port: %[2]d, protocol: http2}]
%[3]s`, svc, port, extra) + fmt.Sprintf(wwRoute, svc)
}

// routed: the route's abort answers (the rules are in), and a request
// reaches the endpoint (its connection is pooled: no test's stream waits
// for a dial, which hands the read loop on too).
func routed(_ *Agent, addr string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return h2cGet(ctx, addr, "/", "x-case", "abort") == 418 && h2cGet(ctx, addr, "/warm") == 200
}

// TestH2WillWaitFaultDelay: a fault's delay hands the read loop on.
func TestH2WillWaitFaultDelay(t *testing.T) {
	u := startHoldUpstream(t)
	addr := willWaitAgent(t, wwDoc("wwfault", 19301, ""), "wwfault", 19301, u, nil, routed)
	queuedAnswered(t, addr, []string{"/a", "x-case", "slow"}, []string{"/b"}, 200, nil, 0)
}

// TestH2WillWaitBreakerQueue: a place in the circuit breaker's queue
// hands the read loop on (B, aborted by a fault, needs no slot).
func TestH2WillWaitBreakerQueue(t *testing.T) {
	u := startHoldUpstream(t)
	addr := willWaitAgent(t, wwDoc("wwcb", 19302, "  circuitBreaker: {maxRequests: 1, maxPendingRequests: 5}\n"), "wwcb", 19302, u, nil, routed)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	held := make(chan int, 1)
	go func() { held <- h2cGet(ctx, addr, "/hold") }() // the one slot, on a connection of its own
	waitFor(t, "the slot taken", func() bool { return u.holding.Load() == 1 })
	queuedAnswered(t, addr, []string{"/a"}, []string{"/b", "x-case", "abort"}, 418, u.release, 200)
	if s := <-held; s != 200 {
		t.Fatalf("the slot's request: %d", s)
	}
}

// blockingLogger is a DecisionLogger that waits, for requests of path
// /slowlog, until released.
type blockingLogger struct {
	held    chan struct{}
	once    sync.Once
	waiting atomic.Int32
}

func (l *blockingLogger) LogDecision(ctx context.Context, d AuthzRecord) {
	if d.Request.Path == "/slowlog" {
		l.waiting.Add(1)
		select {
		case <-l.held:
		case <-ctx.Done():
		}
	}
}

func (l *blockingLogger) release() { l.once.Do(func() { close(l.held) }) }

// TestH2WillWaitAuthzLogger: a configured decision logger (a user's hook
// on each authorization) hands the read loop on.
func TestH2WillWaitAuthzLogger(t *testing.T) {
	u := startHoldUpstream(t)
	lg := &blockingLogger{held: make(chan struct{})}
	t.Cleanup(lg.release)
	doc := wwDoc("wwauthz", 19303, "") + `---
apiVersion: fogmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: wwauthz-all, namespace: demo}
spec: {service: wwauthz, rules: [{to: [{methods: [GET]}]}]}
`
	addr := willWaitAgent(t, doc, "wwauthz", 19303, u, func(c *Config) { c.DecisionLogger = lg }, func(a *Agent, addr string) bool {
		return a.view.Load().authz.Len() == 1 && routed(a, addr)
	})
	queuedAnswered(t, addr, []string{"/slowlog"}, []string{"/b"}, 200, lg.release, 200)
	if lg.waiting.Load() != 1 {
		t.Fatalf("the logger waited %d times, want once", lg.waiting.Load())
	}
}

// TestH2WillWaitReverseProxy: a request the asynchronous path does not
// take (a query ReverseProxy re-encodes) waits for its answer on the
// synchronous path, having handed the read loop on.
func TestH2WillWaitReverseProxy(t *testing.T) {
	u := startHoldUpstream(t)
	addr := willWaitAgent(t, wwDoc("wwrp", 19304, ""), "wwrp", 19304, u, nil, routed)
	queuedAnswered(t, addr, []string{"/hold?a;b"}, []string{"/b"}, 200, u.release, 200)
}

// TestH2WillWaitObserved: with an observer (an access log) the
// asynchronous path takes no request: forwardH2's synchronous round trip
// waits, having handed the read loop on.
func TestH2WillWaitObserved(t *testing.T) {
	u := startHoldUpstream(t)
	logPath := filepath.Join(t.TempDir(), "access.log")
	addr := willWaitAgent(t, wwDoc("wwobs", 19305, ""), "wwobs", 19305, u, func(c *Config) { c.AccessLog.Path = logPath }, routed)
	queuedAnswered(t, addr, []string{"/hold"}, []string{"/b"}, 200, u.release, 200)
}
