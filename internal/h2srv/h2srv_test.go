package h2srv

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/fogmesh/fogmesh/internal/testenv"
)

// serve starts s on a loopback listener and returns its address.
func serve(t testing.TB, s *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		s.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.ServeConn(c, ConnOptions{})
			}()
		}
	}()
	return ln.Addr().String()
}

// h2cClient is x/net's HTTP/2 transport speaking prior knowledge to addr.
func h2cClient(t testing.TB) (*http.Client, *http2.Transport) {
	tr := &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}, tr
}

// TestEchoAndTrailers: a request body past every window (stream 1 MiB,
// the client's 4 MiB) comes back whole, streamed both ways at once; the
// request's trailers reach the handler and the handler's trailers (the
// declared kind and http.TrailerPrefix) reach the client.
func TestEchoAndTrailers(t *testing.T) {
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Sum")
		w.Header().Set("Content-Type", "application/octet-stream")
		w.WriteHeader(200)
		h := sha256.New()
		buf := make([]byte, 32<<10)
		for {
			n, err := r.Body.Read(buf)
			h.Write(buf[:n])
			if _, werr := w.Write(buf[:n]); werr != nil {
				t.Errorf("write: %v", werr)
				return
			}
			w.(http.Flusher).Flush()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Errorf("read: %v", err)
				return
			}
		}
		w.Header().Set("X-Sum", fmt.Sprintf("%x", h.Sum(nil)))
		w.Header().Set(http.TrailerPrefix+"X-Req-Trailer", r.Trailer.Get("X-Client"))
	})}
	addr := serve(t, s)
	c, _ := h2cClient(t)
	body := make([]byte, 9<<20)
	rand.Read(body)
	pr, pw := io.Pipe()
	go func() {
		for p := body; len(p) > 0; {
			n := min(len(p), 100_000)
			pw.Write(p[:n])
			p = p[n:]
		}
		pw.Close()
	}()
	req, _ := http.NewRequest("POST", "http://"+addr+"/echo", pr)
	req.Trailer = http.Header{"X-Client": nil}
	req.Trailer.Set("X-Client", "tv") // sent after the body (set before it ends)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, body) {
		t.Fatalf("echo: got %d bytes, want %d (equal: false)", len(got), len(body))
	}
	if want := fmt.Sprintf("%x", sha256.Sum256(body)); resp.Trailer.Get("X-Sum") != want {
		t.Errorf("trailer X-Sum = %q, want %q", resp.Trailer.Get("X-Sum"), want)
	}
	if v := resp.Trailer.Get("X-Req-Trailer"); v != "tv" {
		t.Errorf("request trailer seen by the handler: %q, want tv", v)
	}
}

// TestSmallResponse: a short answer goes out with a content-length and a
// date, in one piece; HEAD carries no body.
func TestSmallResponse(t *testing.T) {
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Host", r.Host)
		w.Header().Set("X-URI", r.RequestURI)
		io.WriteString(w, "hello")
	})}
	addr := serve(t, s)
	c, _ := h2cClient(t)
	for _, m := range []string{"GET", "HEAD"} {
		req, _ := http.NewRequest(m, "http://"+addr+"/a/b?c=d", nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		wantBody := "hello"
		if m == "HEAD" {
			wantBody = ""
		}
		if string(b) != wantBody || resp.ProtoMajor != 2 || resp.Header.Get("X-Host") != addr ||
			resp.Header.Get("X-URI") != "/a/b?c=d" || resp.Header.Get("Date") == "" {
			t.Errorf("%s: body %q proto %d header %v", m, b, resp.ProtoMajor, resp.Header)
		}
		if m == "GET" && resp.ContentLength != 5 {
			t.Errorf("content-length %d, want 5", resp.ContentLength)
		}
	}
}

// TestCurlPriorKnowledge: curl --http2-prior-knowledge, GET and a POST
// body.
func TestCurlPriorKnowledge(t *testing.T) {
	curl := testenv.NeedTool(t, "curl")
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %d %s", r.Method, r.URL.Path, len(b), r.Proto)
	})}
	addr := serve(t, s)
	out, err := exec.Command(curl, "-sS", "--max-time", "10", "--http2-prior-knowledge", "http://"+addr+"/x").CombinedOutput()
	if err != nil || string(out) != "GET /x 0 HTTP/2.0" {
		t.Fatalf("curl GET: %q %v", out, err)
	}
	f := filepath.Join(t.TempDir(), "body")
	os.WriteFile(f, []byte(strings.Repeat("z", 200000)), 0o600)
	out, err = exec.Command(curl, "-sS", "--max-time", "10", "--http2-prior-knowledge", "--data-binary",
		"@"+f, "http://"+addr+"/p").CombinedOutput()
	if err != nil || string(out) != "POST /p 200000 HTTP/2.0" {
		t.Fatalf("curl POST: %q %v", out, err)
	}
}

// TestShutdownDrains: Shutdown sends GOAWAY; a stream open at the time
// finishes, a new connection is refused, and Shutdown returns once the
// stream is done.
func TestShutdownDrains(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		<-release
		io.WriteString(w, "done")
	})}
	addr := serve(t, s)
	c, _ := h2cClient(t)
	res := make(chan string, 1)
	go func() {
		resp, err := c.Get("http://" + addr + "/slow")
		if err != nil {
			res <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		res <- string(b)
	}()
	<-started
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		shut <- s.Shutdown(ctx)
	}()
	testenv.WaitFor(t, 10*time.Second, "shutdown started", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.shutdown
	})
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned (%v) with a stream open", err)
	default:
	}
	close(release)
	if got := <-res; got != "done" {
		t.Fatalf("open stream: %q, want done", got)
	}
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

// TestTrailersNotCarriedOver: writers are pooled with their trailer keys'
// storage; a response after one with trailers (declared, and set with
// http.TrailerPrefix) has none of them.
func TestTrailersNotCarriedOver(t *testing.T) {
	addr := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/with" {
			w.Header().Set("Trailer", "X-Declared, X-Other")
			io.WriteString(w, "a")
			w.Header().Set("X-Declared", "1")
			w.Header().Set(http.TrailerPrefix+"X-Late", "2")
			return
		}
		io.WriteString(w, "b")
	})})
	client, _ := h2cClient(t)
	for i := range 20 {
		path := "/with"
		if i%2 == 1 {
			path = "/without"
		}
		resp, err := client.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadAll(resp.Body); err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		set := 0
		for _, vv := range resp.Trailer {
			set += len(vv)
		}
		ok := set == 0
		if path == "/with" {
			ok = set == 2 && resp.Trailer.Get("X-Declared") == "1" && resp.Trailer.Get("X-Late") == "2"
		}
		if !ok {
			t.Fatalf("%s (request %d): trailers %v", path, i, resp.Trailer)
		}
	}
}
