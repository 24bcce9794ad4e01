package httpproxy

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/testenv"
)

// Bugs a review of the HTTP/1.1 path found (session 19): each test's
// comment says what went wrong before its fix, and each fails without it.

// zeros is an endless reader of zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// tooBig is an endpoint's early answer to an upload.
const tooBig = "HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big!"

// earlyUpstream sends answer to every connection's first request as soon
// as its head is read, without reading the body; then holds the
// connection open until the test ends (hold) or closes it.
func earlyUpstream(t *testing.T, answer string, hold bool) string {
	t.Helper()
	done := make(chan struct{})
	u := startUpstream(t, func(c net.Conn, req *http.Request) bool {
		io.WriteString(c, answer)
		if hold {
			<-done
		}
		c.Close()
		return false
	})
	t.Cleanup(func() { close(done) }) // before startUpstream's, which waits for this
	return u.ln.Addr().String()
}

// upload sends rt a 64 MiB body for addr and returns what came, failing
// t if nothing did within 5 s.
func upload(t *testing.T, rt http.RoundTripper, addr string) (*http.Response, error) {
	t.Helper()
	req, _ := http.NewRequest("POST", "http://"+addr+"/upload", io.LimitReader(zeros{}, 64<<20))
	req.ContentLength = 64 << 20
	type result struct {
		resp *http.Response
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		resp, err := rt.RoundTrip(req)
		ch <- result{resp, err}
	}()
	select {
	case r := <-ch:
		return r.resp, r.err
	case <-time.After(5 * time.Second):
		t.Fatal("RoundTrip still blocked 5 s after the endpoint answered (writing a body nobody reads)")
		return nil, nil
	}
}

func earlyAnswer(t *testing.T, rt http.RoundTripper, addr string) {
	t.Helper()
	resp, err := upload(t, rt, addr)
	if err != nil {
		t.Fatalf("the endpoint's early 413 was lost: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 413 {
		t.Fatalf("status %d, want 413", resp.StatusCode)
	}
}

func poolTo(addr string) *Pool {
	return NewPool(PoolConfig{Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}})
}

// TestPoolEarlyResponse: an endpoint that answers before reading
// the request body (413, 401) and keeps the connection open: net/http's
// Transport returns the answer; the pool writes the whole body first and
// blocks for good once the socket buffers are full.
func TestPoolEarlyResponseHeld(t *testing.T) {
	t.Run("net/http", func(t *testing.T) {
		tr := &http.Transport{}
		defer tr.CloseIdleConnections()
		earlyAnswer(t, tr, earlyUpstream(t, tooBig, true))
	})
	t.Run("pool", func(t *testing.T) {
		addr := earlyUpstream(t, tooBig, true)
		p := poolTo(addr)
		defer p.Close(true)
		earlyAnswer(t, p, addr)
	})
}

// TestPoolEarlyAnswerAfterInterim: interim responses do not end an
// upload (TestPoolInterimDuringUpload), but what follows them may: a
// final answer, the end of the connection, a 101, bytes that are no
// response. (An interim head longer than the connection's buffer is
// read on: TestPoolLongInterimDuringUpload, TestPoolLongInterimUnfinished.)
func TestPoolEarlyAnswerAfterInterim(t *testing.T) {
	const processing = "HTTP/1.1 102 Processing\r\n\r\n"
	for _, tc := range []struct {
		name   string
		answer string
		hold   bool
		status int // 0: RoundTrip fails
	}{
		{"102 then 413", processing + tooBig, true, 413},
		{"102 and 103 then 413", processing + "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" + tooBig, true, 413},
		{"102 then closed", processing, false, 0},
		{"101", "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n", true, 0},
		{"no response", "SSH-2.0-OpenSSH_9.6\r\n", true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := earlyUpstream(t, tc.answer, tc.hold)
			p := poolTo(addr)
			defer p.Close(true)
			resp, err := upload(t, p, addr)
			if tc.status == 0 {
				if err == nil {
					resp.Body.Close()
					t.Fatalf("status %d, want an error", resp.StatusCode)
				}
				return
			}
			if err != nil {
				t.Fatalf("the endpoint's early %d was lost: %v", tc.status, err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
		})
	}
}

// rejectingServer is net/http's server answering 413 to every request
// without reading its body (it then closes the connection, past 256 KiB
// of unread body, after a half-close and a linger).
func rejectingServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "too big!", http.StatusRequestEntityTooLarge)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// TestPoolEarlyResponseClosed: the endpoint is net/http's server,
// which answers 413 without reading the body and then closes the
// connection: net/http's Transport returns the 413; the pool fails the
// write and reports an upstream failure (502 to the client).
func TestPoolEarlyResponseClosed(t *testing.T) {
	t.Run("net/http", func(t *testing.T) {
		tr := &http.Transport{}
		defer tr.CloseIdleConnections()
		earlyAnswer(t, tr, rejectingServer(t))
	})
	t.Run("pool", func(t *testing.T) {
		addr := rejectingServer(t)
		p := poolTo(addr)
		defer p.Close(true)
		earlyAnswer(t, p, addr)
	})
}

// strayUpstream answers its first request with "ok", then (once told)
// writes a second, unsolicited response on the same connection: an
// endpoint bug, or a server's 408 on an idle connection. It reports when

// TestStatusLineBareCR: a status line whose reason phrase holds a
// bare CR (an endpoint's doing) is refused by the lean parse but taken by
// http.ReadResponse, which does not check the reason phrase, and
// WriteResponse passes resp.Status on as it came: the agent sends a bare
// CR in a status line, which RFC 9112 §2.2 forbids (MUST NOT) and which a
// lenient client reads as a line end, seeing a header the agent never
// saw (here a second Content-Length). net/http's ReverseProxy writes its
// own reason phrase.
func TestStatusLineBareCR(t *testing.T) {
	addr := testenv.AcceptOne(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\rContent-Length: 0\r\nContent-Length: 2\r\n\r\nok")
		br.Peek(1) // until the pool closes
	})
	p := poolTo(addr)
	defer p.Close(true)
	in, _ := http.NewRequest("GET", "http://svc/", nil)
	resp, err := p.RoundTrip(in)
	if err != nil {
		t.Fatalf("the pool refused the response (fine): %v", err)
	}
	defer resp.Body.Close()
	var out bytes.Buffer
	bw := bufio.NewWriter(&out)
	if err := WriteResponse(bw, resp, in, true, nil); err != nil {
		t.Fatal(err)
	}
	line, _, _ := strings.Cut(out.String(), "\n")
	if strings.Contains(strings.TrimSuffix(line, "\r"), "\r") {
		t.Fatalf("status line sent to the client holds a bare CR: %q", line)
	}
}

func TestInterimHead(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      string
		n       int // the length taken, if whole
		interim bool
	}{
		{"102", "HTTP/1.1 102 Processing\r\n\r\n", 27, true},
		{"100 then a final head", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n", 25, true},
		{"103 with fields", "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n", 57, true},
		{"no reason phrase", "HTTP/1.1 102\r\n\r\n", 16, true},
		{"bare LF", "HTTP/1.0 100 Continue\n\nrest", 23, true},
		{"start of the protocol", "HTT", 0, true},
		{"start of a 1xx code", "HTTP/1.1 1", 0, true},
		{"status line not whole", "HTTP/1.1 102 Proc", 0, true},
		{"fields not whole", "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n", 0, true},
		{"CR not followed by LF yet", "HTTP/1.1 102 Processing\r\n\r", 0, true},
		{"final", "HTTP/1.1 200 OK\r\n\r\n", 0, false},
		{"final, status line not whole", "HTTP/1.1 4", 0, false},
		{"101", "HTTP/1.1 101 Switching Protocols\r\n\r\n", 0, false},
		{"code of four digits", "HTTP/1.1 1020\r\n\r\n", 0, false},
		{"code not a number", "HTTP/1.1 1x2\r\n\r\n", 0, false},
		{"HTTP/2", "HTTP/2 100\r\n\r\n", 0, false},
		{"no response", "SSH-2.0-OpenSSH_9.6\r\n", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, interim := interimHead([]byte(tc.in))
			if n != tc.n || interim != tc.interim {
				t.Fatalf("interimHead(%q) = %d, %v; want %d, %v", tc.in, n, interim, tc.n, tc.interim)
			}
		})
	}
}

// noMore gives b, then fails the test if read again: a read the stall
// hook would block on.
type noMore struct {
	t *testing.T
	b []byte
}

func (r *noMore) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		r.t.Fatal("http.ReadResponse read past the interim head interimHead took as whole")
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}

// FuzzInterimHead holds interimHead to http.ReadResponse: a head it
// takes as whole is read by ReadResponse without a read past it and,
// if taken, is the same interim response; a head ReadResponse takes as
// final is never waited on; every start of a whole one is waited on.
func FuzzInterimHead(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 102 Processing\r\n\r\n",
		"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n folded\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
		"HTTP/1.0 100\n\n",
		"HTTP/1.1 101 Switching Protocols\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1  102 x\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		n, interim := interimHead(b)
		if resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(b)), nil); err == nil &&
			(resp.StatusCode < 100 || resp.StatusCode > 199 || resp.StatusCode == 101) && interim {
			t.Fatalf("interimHead(%q) = %d, true: ReadResponse takes it as a final %d", b, n, resp.StatusCode)
		}
		if n == 0 {
			return
		}
		if !interim || n > len(b) {
			t.Fatalf("interimHead(%q) = %d, %v", b, n, interim)
		}
		br := bufio.NewReader(&noMore{t: t, b: b[:n]})
		if resp, err := http.ReadResponse(br, nil); err == nil {
			if resp.StatusCode < 100 || resp.StatusCode > 199 || resp.StatusCode == 101 {
				t.Fatalf("interimHead(%q) = %d: ReadResponse reads status %d", b, n, resp.StatusCode)
			}
			if br.Buffered() != 0 {
				t.Fatalf("interimHead(%q) = %d: ReadResponse left %d bytes of it", b, n, br.Buffered())
			}
		}
		for k := range n {
			if m, ok := interimHead(b[:k]); m != 0 || !ok {
				t.Fatalf("interimHead(%q) = %d, %v: the start of an interim head %q not waited on", b[:k], m, ok, b[:n])
			}
		}
	})
}
