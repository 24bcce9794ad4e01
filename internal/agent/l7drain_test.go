package agent

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestDeniedBodyDrainBounded: the agent answers a request itself (an
// authorization deny for a local endpoint) before the client has sent its
// body. What is left of the body is read only to be thrown away, and
// within timeouts.requestBody (300 ms here): a client that declares 100000
// bytes and sends none is closed within the bound, on the fast path and on
// the net/http server path (absolute-form target), for a gRPC deny (no
// body), a HEAD, a plain POST and a fault's abort. (Before: the drain had no deadline; the
// connection and its goroutine were held until the client left.)
func TestDeniedBodyDrainBounded(t *testing.T) {
	be := startCounting(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "ok")
	}))
	addr, addrK := startDenyingAgent(t, be.port)

	for _, path := range []struct{ name, target string }{{"fast", "/"}, {"server", "http://dd/"}} {
		for _, v := range []struct{ name, head, want string }{
			{"grpc", "POST " + path.target + "pkg.Svc/Call HTTP/1.1\r\nHost: dd\r\nContent-Type: application/grpc\r\nTe: trailers\r\nContent-Length: 100000\r\n\r\n", "HTTP/1.1 200"},
			{"head", "HEAD " + path.target + " HTTP/1.1\r\nHost: dd\r\nContent-Length: 100000\r\n\r\n", "HTTP/1.1 403"},
			{"post", "POST " + path.target + " HTTP/1.1\r\nHost: dd\r\nContent-Length: 100000\r\n\r\nA", "HTTP/1.1 403"},
			// A fault's abort: answered before the request's bounds are armed.
			{"fault", "POST " + path.target + " HTTP/1.1\r\nHost: dd\r\nX-Case: abort\r\nContent-Length: 100000\r\n\r\nA", "HTTP/1.1 418"},
		} {
			t.Run(path.name+" "+v.name, func(t *testing.T) {
				t.Parallel()
				c, err := net.DialTimeout("tcp", addr, 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				if _, err := io.WriteString(c, v.head); err != nil {
					t.Fatal(err)
				}
				// The bound is 300 ms; the rest is slack for a busy machine.
				start := time.Now()
				c.SetReadDeadline(start.Add(10 * time.Second))
				out, err := io.ReadAll(c)
				if errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("the agent still holds the connection %v after its answer %q", time.Since(start), out)
				}
				if !strings.HasPrefix(string(out), v.want) {
					t.Fatalf("answer %q (%v); want %s", out, err, v.want)
				}
				if v.name == "grpc" && !strings.Contains(string(out), "Grpc-Status: 7") {
					t.Fatalf("answer %q; want PERMISSION_DENIED", out)
				}
				t.Logf("closed %v after the head", time.Since(start))
			})
		}
	}

	// A denied POST whose body comes whole keeps its connection: the body
	// is drained and the next request is served, whether the body came
	// with the head (buffered) or only after the answer was read (the
	// answer streamed with the client watched; before, that left the
	// connection's deadline in the past and the drain failed).
	for _, bodyAfter := range []bool{false, true} {
		name := "keep-alive body with head"
		if bodyAfter {
			name = "keep-alive body after answer"
		}
		t.Run(name, func(t *testing.T) {
			c, err := net.DialTimeout("tcp", addrK, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			br := bufio.NewReader(c)
			head := "POST / HTTP/1.1\r\nHost: ddk\r\nContent-Length: 5\r\n\r\n"
			if !bodyAfter {
				head += "hello"
			}
			if _, err := io.WriteString(c, head); err != nil {
				t.Fatal(err)
			}
			req, _ := http.NewRequest(http.MethodPost, "/", nil)
			resp, err := http.ReadResponse(br, req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			if resp.StatusCode != http.StatusForbidden || resp.Close {
				t.Fatalf("first answer %d close=%v; want 403 keeping the connection", resp.StatusCode, resp.Close)
			}
			if bodyAfter {
				io.WriteString(c, "hello")
			}
			if _, err := io.WriteString(c, "GET /again HTTP/1.1\r\nHost: ddk\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			req, _ = http.NewRequest(http.MethodGet, "/again", nil)
			resp, err = http.ReadResponse(br, req)
			if err != nil {
				t.Fatalf("second request on the connection: %v (the agent closed it after the denied POST)", err)
			}
			io.Copy(io.Discard, resp.Body)
			if resp.StatusCode != http.StatusForbidden {
				t.Fatalf("second answer %d; want 403", resp.StatusCode)
			}
		})
	}
}

// startDenyingAgent starts an agent with services dd (requestBody 300 ms,
// an abort fault for "X-Case: abort") and ddk (requestBody 10 s), whose
// local endpoint (port) is open to no one; it returns their addresses.
func startDenyingAgent(t *testing.T, port int) (dd, ddk string) {
	t.Helper()
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: dd, namespace: demo}
spec:
  ports: [{name: web, port: 19441, protocol: http}]
  timeouts: {requestBody: 300ms}
---
apiVersion: fogmesh.io/v1alpha1
kind: Route
metadata: {name: dd, namespace: demo}
spec:
  service: dd
  rules:
  - match: [{headers: {x-case: {exact: abort}}}]
    backends: [{}]
    fault: {abort: {httpStatus: 418, percent: 100}}
---
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: ddk, namespace: demo}
spec:
  ports: [{name: web, port: 19442, protocol: http}]
  timeouts: {requestBody: 10s}
---
apiVersion: fogmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: dd-nobody, namespace: demo}
spec: {service: dd, rules: [{from: [{principals: ["*/sa/nobody"]}]}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: ddk-nobody, namespace: demo}
spec: {service: ddk, rules: [{from: [{principals: ["*/sa/nobody"]}]}]}
`)
	a := startAgent(t, agentOpts{name: "dd", site: "s1", region: "r1", vipOctet: 218, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{webWorkload("dd", "dd-1", port), webWorkload("ddk", "ddk-1", port)}})
	waitFor(t, "endpoints and policies", func() bool {
		return len(endpointsOf(a, "demo/dd")) == 1 && len(endpointsOf(a, "demo/ddk")) == 1 && a.view.Load().authz.Len() == 2
	})
	vip := func(name string, port int) string {
		r, ok := a.LookupService("demo", name)
		if !ok {
			t.Fatalf("no VIP for %s", name)
		}
		return net.JoinHostPort(r.V4.String(), strconv.Itoa(port))
	}
	dd, ddk = vip("dd", 19441), vip("ddk", 19442)
	waitListening(t, dd)
	waitListening(t, ddk)
	return dd, ddk
}
