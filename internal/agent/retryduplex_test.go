package agent

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// TestFastDuplexRetryEcho: the retry of a chunked stream whose first
// attempt went full duplex (its endpoint read part 1, then answered 503)
// goes full duplex too, while the first attempt's read of the client
// still waits: the client, which waits for the echo of part 1 before it
// sends part 2, gets it. (The retry read the body on the round trip's
// goroutine behind the first attempt's pending read, its request unsent:
// the client waited until timeouts.requestBody, 2 s here, and got a 408.)
func TestFastDuplexRetryEcho(t *testing.T) {
	testRetryEcho(t, 1, "frd", 194, 19896)
}

// TestFastDuplexThirdAttemptEcho: TestFastDuplexRetryEcho with two
// attempts that fail (each read part 1, then answered 503) before the
// third echoes: three goroutines of the pool read the client's body
// through the replay buffer, one beside the other (h1duplex.go's Duplex
// keeps a done per attempt; joinDuplex waits for all), and the client
// gets each echo.
func TestFastDuplexThirdAttemptEcho(t *testing.T) {
	testRetryEcho(t, 2, "frd3", 175, 19962)
}

// testRetryEcho runs the echo stream of TestFastDuplexRetryEcho against
// an endpoint whose first fails POSTs answer 503 after part 1, through
// an agent on VIP octet, service svc on port vipPort with fails retries.
func testRetryEcho(t *testing.T, fails int, svc string, octet, vipPort int) {
	var posts atomic.Int32
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			io.WriteString(w, "ok")
			return
		}
		rc := http.NewResponseController(w)
		rc.EnableFullDuplex()
		buf := make([]byte, 64)
		if posts.Add(1) <= int32(fails) {
			io.ReadFull(r.Body, buf[:5])
			w.Header().Set("Connection", "close")
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		echoFlushed(w, rc, r.Body, buf)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	doc := fmt.Sprintf(`apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: %s, namespace: demo}
spec:
  ports: [{name: web, port: %d, protocol: http}]
  retries: {attempts: %d, on5xx: true, methods: any}
  outlierDetection: {consecutiveErrors: -1}
  timeouts: {requestBody: 2s}
`, svc, vipPort, fails)
	f := agentInFront(t, inFront{node: svc, octet: octet, svc: svc, vipPort: vipPort, doc: doc, port: ln.Addr().(*net.TCPAddr).Port, noRequest: true})
	c, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	fmt.Fprintf(c, "POST /s HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n\r\n5\r\npart1\r\n", svc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("status %d (%q), want 200 with the echo (%d POSTs)", resp.StatusCode, b, posts.Load())
	}
	echo := make([]byte, 5)
	for j := 1; j <= 3; j++ {
		if j > 1 {
			fmt.Fprintf(c, "5\r\npart%d\r\n", j)
		}
		if _, err := io.ReadFull(resp.Body, echo); err != nil || string(echo) != fmt.Sprintf("part%d", j) {
			t.Fatalf("echo %d %q, %v", j, echo, err)
		}
	}
	io.WriteString(c, "0\r\n\r\n")
	if rest, err := io.ReadAll(resp.Body); err != nil || len(rest) != 0 {
		t.Fatalf("end %q, %v", rest, err)
	}
	if n := posts.Load(); n != int32(fails)+1 {
		t.Errorf("%d POSTs reached the endpoint, want %d (the retries)", n, fails+1)
	}
}

// echoFlushed writes back what it reads from body, each part flushed as it
// comes (a full-duplex echo), until the body ends or fails.
func echoFlushed(w io.Writer, rc *http.ResponseController, body io.Reader, buf []byte) {
	for {
		n, err := body.Read(buf)
		if n > 0 {
			w.Write(buf[:n])
			rc.Flush()
		}
		if err != nil {
			return
		}
	}
}
