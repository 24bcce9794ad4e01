package agent

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestH1ResponsePassThrough: through the HTTP/1.1 fast path, a plain
// response head reaches the client byte for byte as the workload wrote it
// (field names in their own spelling: httpproxy passes the lines on), a
// head with a hop-by-hop field reaches it without that field, and a
// workload's own X-Fogmesh-Workload-Refused field (only an agent may say
// so) is cut from a head that would otherwise pass as it came.
func TestH1ResponsePassThrough(t *testing.T) {
	const plain = "HTTP/1.1 200 OK\r\nx-custom-Case:  A \r\nContent-Length: 2\r\n\r\n"
	heads := map[string]string{
		"/plain":   plain,
		"/hop":     "HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nX-Kept: 1\r\nContent-Length: 2\r\n\r\n",
		"/refused": "HTTP/1.1 503 Service Unavailable\r\nX-Fogmesh-Workload-Refused: 1\r\nX-Kept: 1\r\nContent-Length: 2\r\n\r\n",
	}
	be := startCaptureBackend(t, func(r *http.Request) string { // answers each request by its path
		if head, ok := heads[r.URL.Path]; ok {
			return head + "ok"
		}
		return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	})
	addr := agentInFront(t, inFront{node: "passn", octet: 125, svc: "pass", vipPort: 19145, port: be.port()}).addr
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	get := func(path string) (string, *http.Response) {
		t.Helper()
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: pass.demo\r\n\r\n", path)
		var head bytes.Buffer // the head's bytes as they came
		for !bytes.HasSuffix(head.Bytes(), []byte("\r\n\r\n")) {
			line, err := br.ReadSlice('\n')
			if err != nil {
				t.Fatalf("%s: %v after %q", path, err, head.Bytes())
			}
			head.Write(line)
		}
		raw := head.String()
		resp, err := http.ReadResponse(bufio.NewReader(io.MultiReader(&head, br)), nil)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "ok" {
			t.Fatalf("%s: body %q", path, body)
		}
		return raw, resp
	}
	for range 3 { // the same connection, more than once
		if head, _ := get("/plain"); head != plain {
			t.Errorf("/plain: the client got the head %q, the workload sent %q", head, plain)
		}
		if head, resp := get("/hop"); strings.Contains(strings.ToLower(head), "keep-alive") || resp.Header.Get("X-Kept") != "1" {
			t.Errorf("/hop: the client got the head %q", head)
		}
		if head, resp := get("/refused"); resp.StatusCode != 503 || strings.Contains(strings.ToLower(head), "workload-refused") || resp.Header.Get("X-Kept") != "1" {
			t.Errorf("/refused: the client got the head %q", head)
		}
	}
}
