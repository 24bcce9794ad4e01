package agent

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/fogmesh/fogmesh/internal/transport"
)

// TestPanicServerRecordMesh: a request of a peer's mesh stream whose
// handling panics on the endpoint's agent (its DecisionLogger), served by
// net/http's server (HTTP/1.1) and by h2srv (HTTP/2), is recorded on the
// server side as a 500 with the panic (access log, golden metrics), is
// counted once, and gets no answer; the stream serves on (HTTP/2: the
// stream is reset, the connection kept).
func TestPanicServerRecordMesh(t *testing.T) {
	a, _, _, logPath := goPanicAgentLog(t)
	base := panicsNow(a)
	ep := endpointsOf(a, "demo/gp")[0]
	mc := transport.NewClient(transport.ClientConfig{SourceNode: "peer"})
	defer mc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dial := func(port string) net.Conn {
		s, err := mc.Dial(ctx, a.MeshAddr(), transport.Header{Namespace: "demo", Service: "gp", Endpoint: ep.Name, Port: port, Source: "peer", L7: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}

	// HTTP/1.1: net/http's server.
	s := dial("web")
	s.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(s, "GET /panic HTTP/1.1\r\nHost: gp.demo\r\n\r\n")
	if resp, err := http.ReadResponse(bufio.NewReader(s), nil); err == nil {
		t.Fatalf("HTTP/1.1: an answer to the request that panicked: %s", resp.Status)
	}

	// HTTP/2: h2srv.
	cc, err := (&http2.Transport{AllowHTTP: true}).NewClientConn(dial("h2"))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	get := func(path string) (*http.Response, error) {
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://gp.demo"+path, nil)
		return cc.RoundTrip(req)
	}
	if resp, err := get("/panic"); err == nil {
		t.Fatalf("HTTP/2: an answer to the request that panicked: %s", resp.Status)
	}
	resp, err := get("/after")
	if err != nil {
		t.Fatalf("HTTP/2: the stream's next request: %v", err)
	}
	resp.Body.Close()

	waitFor(t, "both server lines of /panic", func() bool {
		n := 0
		for _, l := range readLog(t, logPath) {
			if l["path"] == "/panic" && l["side"] == "server" {
				n++
			}
		}
		return n == 2
	})
	for _, l := range readLog(t, logPath) {
		if l["path"] == "/panic" && l["side"] == "server" {
			if l["status"] != 500.0 || l["error"] != "panic: test: a bug in the decision logger" {
				t.Errorf("server line %v, want status 500 and the panic", l)
			}
		}
	}
	if n := panicsNow(a); n != base+2 {
		t.Errorf("%d panics counted, want %d", n, base+2)
	}
	var m strings.Builder
	a.cfg.Metrics.WritePrometheus(&m)
	if !strings.Contains(m.String(), `source_node="peer",node="gpn",code_class="5xx"} 2`) {
		t.Errorf("not two 5xx server requests from peer in\n%s", m.String())
	}
}

// TestPanicServerRecordBeforeBegin: a panic in authzServer.handle before
// its request's record began (here the identity header's Set on a request
// with no header map, which the servers never hand over: it stands in for
// a bug while vouching for the source or scrubbing its headers) had no
// server-side access-log line and no golden metric; both say 500 with the
// panic now, as a panic after the record began does.
func TestPanicServerRecordBeforeBegin(t *testing.T) {
	a, _, _, logPath := goPanicAgentLog(t)
	ep := endpointsOf(a, "demo/gp")[0]
	ms := &meshStream{h: transport.Header{Namespace: "demo", Service: "gp", Port: "web", Endpoint: ep.Name},
		sourceID: "spiffe://fogmesh.local/ns/demo/sa/early", sourceNode: "early-peer", proto: "http",
		local: &meshConn{addr: "127.0.0.1:1"}, streamCtx: context.Background()}
	r := httptest.NewRequest("GET", "http://gp.demo/early", nil)
	r = r.WithContext(context.WithValue(r.Context(), meshStreamKey{}, ms))
	r.Header = nil
	p := func() (p any) {
		defer func() { p = recover() }()
		a.authzHTTP.handle(httptest.NewRecorder(), r)
		return nil
	}()
	if p != http.ErrAbortHandler {
		t.Fatalf("handle panicked with %v, want http.ErrAbortHandler", p)
	}
	line := serverLogLine(t, logPath, "/early")
	if line["status"] != 500.0 || !strings.HasPrefix(line["error"].(string), "panic: assignment to entry in nil map") {
		t.Errorf("server line %v, want status 500 and the panic", line)
	}
	var m strings.Builder
	a.cfg.Metrics.WritePrometheus(&m)
	if !strings.Contains(m.String(), `source_node="early-peer",node="gpn",code_class="5xx"} 1`) {
		t.Errorf("no 5xx server request from early-peer in\n%s", m.String())
	}
}
