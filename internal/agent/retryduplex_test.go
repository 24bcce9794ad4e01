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
		if posts.Add(1) == 1 {
			io.ReadFull(r.Body, buf[:5])
			w.Header().Set("Connection", "close")
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		for {
			n, err := r.Body.Read(buf)
			if n > 0 {
				w.Write(buf[:n])
				rc.Flush()
			}
			if err != nil {
				return
			}
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	doc := `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: frd, namespace: demo}
spec:
  ports: [{name: web, port: 19896, protocol: http}]
  retries: {attempts: 1, on5xx: true, methods: any}
  outlierDetection: {consecutiveErrors: -1}
  timeouts: {requestBody: 2s}
`
	f := agentInFront(t, inFront{node: "frd", octet: 194, svc: "frd", vipPort: 19896, doc: doc, port: ln.Addr().(*net.TCPAddr).Port, noRequest: true})
	c, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	io.WriteString(c, "POST /s HTTP/1.1\r\nHost: frd\r\nTransfer-Encoding: chunked\r\n\r\n5\r\npart1\r\n")
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
	if n := posts.Load(); n != 2 {
		t.Errorf("%d POSTs reached the endpoint, want 2 (the retry)", n)
	}
}
