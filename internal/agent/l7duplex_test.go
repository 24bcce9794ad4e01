package agent

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/transport"
)

// The agent's net/http server paths (the source agent's for what the fast
// path hands over, the destination agent's authzServer for mesh streams
// served per request) proxy a request body while the endpoint's response
// goes out. net/http's HTTP/1 server, unless told the handler is full
// duplex, reads what is left of an unread body before it writes the
// response header (up to 256 KiB): it took the tail of a body the endpoint
// was still reading through the proxy, the proxy's read of the closed body
// failed, and the response was cut (TestSecureDataPlane's 1 MiB echo came
// back with 512 bytes, now and then: when the endpoint's head reached the
// agent after more than 768 KiB of the body had gone through).

// duplexBody is the request body of the duplex tests: 1 MiB.
const duplexBody = 1 << 20

// startDuplexEcho is an endpoint that answers a POST after 900 KiB of its
// body (header and a first line flushed), then reads the rest and ends
// with the count it read.
func startDuplexEcho(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		rc.EnableFullDuplex() // the endpoint itself reads on as it answers
		n, err := io.CopyN(io.Discard, r.Body, 900<<10)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		io.WriteString(w, "early\n")
		rc.Flush()
		m, err := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "n=%d err=%v", n+m, err)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

// duplexExchange sends a 1 MiB POST on c, head first (with extra fields),
// all of the body but its last KiB, waits for the response header, then
// sends the last KiB: the endpoint must answer before the body has ended,
// and read all of it. chunked: the body in 16 KiB chunks, not with a
// Content-Length (net/http's server took the rest of those whatever its
// length).
func duplexExchange(t *testing.T, c net.Conn, host, extra string, chunked bool) {
	t.Helper()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	body := strings.Repeat("0123456789abcdef", duplexBody/16)
	head := fmt.Sprintf("POST /duplex HTTP/1.1\r\nHost: %s\r\n%sContent-Length: %d\r\n\r\n", host, extra, duplexBody)
	first, last := body[:duplexBody-1024], body[duplexBody-1024:]
	if chunked {
		head = fmt.Sprintf("POST /duplex HTTP/1.1\r\nHost: %s\r\n%sTransfer-Encoding: chunked\r\n\r\n", host, extra)
		var b strings.Builder
		for i := 0; i < len(first); i += 16 << 10 {
			part := first[i:min(i+16<<10, len(first))]
			fmt.Fprintf(&b, "%x\r\n%s\r\n", len(part), part)
		}
		first, last = b.String(), fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(last), last)
	}
	sent := make(chan error, 1)
	go func() {
		_, err := io.WriteString(c, head+first)
		sent <- err
	}()
	br := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no response header before the body's last KiB (the proxy read the rest of the body itself?): %v", err)
	}
	defer resp.Body.Close()
	if err := <-sent; err != nil {
		t.Fatalf("write: %v", err)
	}
	if _, err := io.WriteString(c, last); err != nil {
		t.Fatalf("write the last KiB: %v", err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(resp.Body)
	want := fmt.Sprintf("early\nn=%d err=<nil>", duplexBody)
	if err != nil || resp.StatusCode != 200 || string(got) != want {
		t.Fatalf("%s, body %q, err %v; want 200 and %q", resp.Status, got, err, want)
	}
	if resp.Close {
		t.Errorf("the response says Connection: close: the body was read whole, the connection can carry the next request")
	}
}

// TestDuplexBodySourceServer: a request the fast path hands to net/http's
// server (a head over 4 KiB) to a local endpoint.
func TestDuplexBodySourceServer(t *testing.T) {
	f := agentInFront(t, inFront{node: "dxs", octet: 105, svc: "dxs", vipPort: 19850, port: startDuplexEcho(t), noRequest: true})
	c, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	duplexExchange(t, c, "dxs", "X-Pad: "+strings.Repeat("p", 5000)+"\r\n", false)
	// The next request on the same connection, its body chunked.
	duplexExchange(t, c, "dxs", "X-Pad: "+strings.Repeat("p", 5000)+"\r\n", true)
}

// TestDuplexBodyAuthzServer: a peer's mesh stream whose requests the
// destination agent authorizes one by one (authzServer).
func TestDuplexBodyAuthzServer(t *testing.T) {
	a := policedAgent(t, "dxa", 106, 19851, startDuplexEcho(t), "", "POST")
	s := peerStream(t, a, "dxa")
	duplexExchange(t, s, "dxa", "", false)
	duplexExchange(t, s, "dxa", "", true) // the next request of the stream
}

// TestDeniedPeerBodyDrainBounded: a peer's request the destination agent
// denies (authzServer) is answered after what is left of its body was
// read and dropped: a peer that declares a body and stalls is cut within
// timeouts.requestBody (300 ms here), not held until it leaves.
func TestDeniedPeerBodyDrainBounded(t *testing.T) {
	a := policedAgent(t, "dxd", 108, 19852, startDuplexEcho(t), "300ms", "GET")
	s := peerStream(t, a, "dxd")
	io.WriteString(s, "POST /denied HTTP/1.1\r\nHost: dxd\r\nContent-Length: 100000\r\n\r\nA")
	s.SetReadDeadline(time.Now().Add(10 * time.Second))
	out, err := io.ReadAll(s)
	if !strings.HasPrefix(string(out), "HTTP/1.1 403") {
		t.Fatalf("answer %q (%v); want 403 and the stream's end within the body bound", out, err)
	}
}

// policedAgent starts a control plane that knows service svc (port
// vipPort, protocol http, timeouts.requestBody body unless empty) and a
// policy allowing methods (comma-separated) on it, and an agent on VIP
// range 127.<octet>.0.0/16 whose one workload svc-1 is the endpoint on
// port: with the policy the agent serves a peer's mesh streams request by
// request (authzServer).
func policedAgent(t *testing.T, svc string, octet, vipPort, port int, body, methods string) *Agent {
	t.Helper()
	timeouts := ""
	if body != "" {
		timeouts = "\n  timeouts: {requestBody: " + body + "}"
	}
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, fmt.Sprintf(`apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: %[1]s, namespace: demo}
spec:
  ports: [{name: web, port: %[2]d, protocol: http}]%[3]s
---
apiVersion: fogmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: %[1]s-allow, namespace: demo}
spec: {service: %[1]s, rules: [{to: [{methods: [%[4]s]}]}]}
`, svc, vipPort, timeouts, methods))
	a := startAgent(t, agentOpts{name: svc, site: "s1", region: "r1", vipOctet: octet, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{webWorkload(svc, svc+"-1", port)}})
	waitFor(t, "endpoint and policy", func() bool { return len(endpointsOf(a, "demo/"+svc)) == 1 && a.view.Load().authz.Len() == 1 })
	return a
}

// peerStream opens a peer's mesh stream to a's endpoint svc-1 of svc.
func peerStream(t *testing.T, a *Agent, svc string) net.Conn {
	t.Helper()
	mc := transport.NewClient(transport.ClientConfig{SourceNode: "peer"})
	t.Cleanup(func() { mc.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := mc.Dial(ctx, a.MeshAddr(), transport.Header{Namespace: "demo", Service: svc, Endpoint: svc + "-1", Port: "web"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}
