package agent

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"
)

// TestReplayPoolRetriedUploads: uploads of sizes about each replay pool's
// (3, 10, 20 and 50 KiB), on four connections at once, echoed; two in
// nine answered 503 on their first attempt (the body read whole; the
// connection kept or closed) and echoed on their retry; the client
// writing each whole (its rest read on the round trip's goroutine) or,
// for half of those not failed, a third and then the rest once the
// answer's head came (full duplex: the round trip returns while the rest
// is read into the replay buffer). Each echo must be its own body, byte for byte: a replay buffer
// back in its pool while an attempt still read or wrote it would hand one
// request's bytes to another's.
func TestReplayPoolRetriedUploads(t *testing.T) {
	var mu sync.Mutex
	tried := map[string]bool{}
	failed := 0
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			io.WriteString(w, "ok")
			return
		}
		id := r.Header.Get("X-Id")
		mu.Lock()
		first := !tried[id]
		tried[id] = true
		mu.Unlock()
		if first && r.Header.Get("X-Fail") != "" {
			mu.Lock()
			failed++
			mu.Unlock()
			io.Copy(io.Discard, r.Body)
			if id[len(id)-1]%2 == 1 {
				w.Header().Set("Connection", "close")
			}
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		// Echoed as it is read, the head first: the round trip returns
		// while a retry still replays the body's buffer.
		rc := http.NewResponseController(w)
		rc.EnableFullDuplex()
		w.Header().Set("Content-Length", r.Header.Get("Content-Length"))
		w.WriteHeader(http.StatusOK)
		rc.Flush()
		buf := make([]byte, 1024)
		echoFlushed(w, rc, r.Body, buf)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	doc := `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: rpool, namespace: demo}
spec:
  ports: [{name: web, port: 19976, protocol: http}]
  retries: {attempts: 1, on5xx: true, methods: any}
  outlierDetection: {consecutiveErrors: -1}
  timeouts: {requestBody: 5s}
`
	f := agentInFront(t, inFront{node: "rpool", octet: 253, svc: "rpool", vipPort: 19976, doc: doc, port: ln.Addr().(*net.TCPAddr).Port, noRequest: true})
	sizes := []int{3 << 10, 10 << 10, 20 << 10, 50 << 10}
	errs := make(chan error, 4)
	for c := 0; c < 4; c++ {
		go func() {
			errs <- func() error {
				conn, err := net.Dial("tcp", f.addr)
				if err != nil {
					return err
				}
				defer conn.Close()
				br := bufio.NewReader(conn)
				for i := 0; i < 36; i++ {
					conn.SetDeadline(time.Now().Add(20 * time.Second))
					id := fmt.Sprintf("c%d-r%d", c, i)
					body := bytes.Repeat([]byte(id+"|"), sizes[(i+c)%4]/len(id+"|"))
					fail := "" // within the retry budget: 10, and a fifth of a retry a request
					if i%9 == 0 || i%9 == 4 {
						fail = "X-Fail: 1\r\n"
					}
					head := fmt.Sprintf("POST /u HTTP/1.1\r\nHost: rpool\r\nX-Id: %s\r\n%sContent-Length: %d\r\n\r\n", id, fail, len(body))
					// Even: written whole. Odd: a third, then the rest once
					// the answer's head came (full duplex: the round trip
					// returns while the body's rest is read into its buffer).
					split := i%2 == 1 && fail == ""
					msg := append([]byte(head), body...)
					if split {
						msg = msg[:len(head)+len(body)/3]
					}
					wrote := make(chan error, 1)
					go func() { _, err := conn.Write(msg); wrote <- err }()
					resp, err := http.ReadResponse(br, nil)
					if err != nil {
						return fmt.Errorf("%s: %w", id, err)
					}
					if err := <-wrote; err != nil {
						return err
					}
					if split {
						go func() { _, err := conn.Write(body[len(body)/3:]); wrote <- err }()
					}
					got, err := io.ReadAll(resp.Body)
					resp.Body.Close()
					if err != nil || resp.StatusCode != http.StatusOK || !bytes.Equal(got, body) {
						return fmt.Errorf("%s: status %d, %d bytes back of %d (%v), equal %v", id, resp.StatusCode, len(got), len(body), err, bytes.Equal(got, body))
					}
					if split {
						if err := <-wrote; err != nil {
							return err
						}
					}
					if resp.Close {
						return fmt.Errorf("%s: the answer closes the client's connection", id)
					}
				}
				return nil
			}()
		}()
	}
	for c := 0; c < 4; c++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if failed != 4*8 {
		t.Fatalf("%d first attempts answered 503, want 32", failed)
	}
}
