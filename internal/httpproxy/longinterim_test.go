package httpproxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// longHints is a 103 Early Hints head of about size bytes: Link fields of
// 100 bytes each.
func longHints(size int) string {
	var b strings.Builder
	b.WriteString("HTTP/1.1 103 Early Hints\r\n")
	for i := 0; b.Len() < size; i++ {
		b.WriteString("Link: </static/" + strings.Repeat("a", 64) + strconv.Itoa(100000+i) + ".css>; rel=preload\r\n")
	}
	b.WriteString("\r\n")
	return b.String()
}

// TestPoolLongInterimDuringUpload: an endpoint that sends a 1xx head
// longer than the pool's read buffer (BufSize, 4 KiB: a 103 Early Hints
// with many Link fields), whole or in parts, while the pool's write of a
// large request body is stalled must get the whole body and the client
// its final answer, as with net/http's Transport, which drops the 1xx
// head and writes on. The stall hook took a head that did not fit its
// buffer for an early answer and ended the upload: the client got "the
// endpoint answered before it took the whole request: unexpected EOF".
func TestPoolLongInterimDuringUpload(t *testing.T) {
	const size = 8 << 20
	for name, parts := range map[string]func() []string{
		"6 KiB":                  func() []string { return []string{longHints(6 << 10)} },
		"40 KiB":                 func() []string { return []string{longHints(40 << 10)} },
		"6 KiB in parts":         func() []string { h := longHints(6 << 10); return []string{h[:3000], h[3000:5000], h[5000:]} },
		"6 KiB split in its end": func() []string { h := longHints(6 << 10); return []string{h[:len(h)-3], h[len(h)-3:]} },
		"6 KiB then a short one": func() []string { return []string{longHints(6<<10) + "HTTP/1.1 102 Processing\r\n\r\n"} },
		"long status line, 6 KiB": func() []string {
			return []string{"HTTP/1.1 103 " + strings.Repeat("x", 5000) + "\r\nLink: </a.css>\r\n\r\n"}
		},
		"a short one then 6 KiB": func() []string { return []string{"HTTP/1.1 100 Continue\r\n\r\n" + longHints(6<<10)} },
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			heads := parts()
			var stalls atomic.Int64
			// afterStalls waits until the pool's stall hook ran twice after
			// the call: the second of them began after it, and saw what the
			// endpoint wrote before.
			afterStalls := func() bool { return moreStalls(&stalls, 2) }
			u := startUpstream(t, func(c net.Conn, req *http.Request) bool {
				if req.Method == "GET" {
					return ok(c, req)
				}
				c.(*net.TCPConn).SetReadBuffer(smallBuffers)
				if !afterStalls() { // the pool's write stalls first
					return false
				}
				for _, h := range heads {
					io.WriteString(c, h)
					if !afterStalls() {
						return false // the pool gave up writing: the test fails
					}
				}
				return countBody(c, req, 0)
			})
			p := stallingPool(u)
			p.testHookStall = func() { stalls.Add(1) }
			defer p.Close(true)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "POST", "http://svc/upload", io.LimitReader(zeros{}, size))
			req.ContentLength = size
			resp, err := p.RoundTrip(req)
			if err != nil {
				t.Fatalf("upload to an endpoint that sent a %d-byte 1xx head while it did not read failed: %v", len(strings.Join(heads, "")), err)
			}
			uploadedOnOneConn(t, p, u, resp, size)
		})
	}
}

// TestPoolLongInterimUnfinished: an endpoint that sends the start of an
// interim head longer than the pool's buffer, then neither ends it nor
// reads the body, holds the upload until the request's context ends, as
// it holds net/http's Transport's (which writes on, and reads the head on):
// the error is the context's, not an answer made up from half a head.
func TestPoolLongInterimUnfinished(t *testing.T) {
	const start = "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nLink: </"
	partial := start + strings.Repeat("a", 2*BufSize)
	for name, rt := range map[string]func(addr string) http.RoundTripper{
		"net/http": func(string) http.RoundTripper { return &http.Transport{} },
		"pool":     func(addr string) http.RoundTripper { return poolTo(addr) },
	} {
		t.Run(name, func(t *testing.T) {
			addr := earlyUpstream(t, partial, true)
			rt := rt(addr)
			defer func() {
				if p, ok := rt.(*Pool); ok {
					p.Close(true)
				} else {
					rt.(*http.Transport).CloseIdleConnections()
				}
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "POST", "http://"+addr+"/upload", io.LimitReader(zeros{}, 64<<20))
			req.ContentLength = 64 << 20
			resp, err := rt.RoundTrip(req)
			if err == nil {
				resp.Body.Close()
				t.Fatalf("status %d, want the context's error", resp.StatusCode)
			}
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("error %v, want the context's deadline", err)
			}
		})
	}
}

// TestPoolLongInterimBounded: a 1xx head longer than MaxResponseHeadBytes
// that comes while the upload is stalled fails the request, as net/http's
// Transport fails it past MaxResponseHeaderBytes; the pool does not
// gather it on.
func TestPoolLongInterimBounded(t *testing.T) {
	const limit = 16 << 10
	hints := longHints(40 << 10)
	t.Run("net/http", func(t *testing.T) {
		tr := &http.Transport{MaxResponseHeaderBytes: limit}
		defer tr.CloseIdleConnections()
		addr := earlyUpstream(t, hints, true)
		if resp, err := upload(t, tr, addr); err == nil {
			resp.Body.Close()
			t.Fatalf("status %d, want an error", resp.StatusCode)
		}
	})
	t.Run("pool", func(t *testing.T) {
		addr := earlyUpstream(t, hints, true)
		p := NewPool(PoolConfig{MaxResponseHeadBytes: limit, Dial: func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		}})
		defer p.Close(true)
		if resp, err := upload(t, p, addr); err == nil {
			resp.Body.Close()
			t.Fatalf("status %d, want an error", resp.StatusCode)
		}
	})
}

// sideBySide runs check against net/http's Transport and against the pool,
// each with MaxResponseHeaderBytes (MaxResponseHeadBytes) limit (0: the
// default), for an endpoint that answers every upload with answer and
// holds the connection (earlyUpstream).
func sideBySide(t *testing.T, answer string, limit int64, check func(t *testing.T, resp *http.Response, err error)) {
	t.Helper()
	t.Run("net/http", func(t *testing.T) {
		tr := &http.Transport{MaxResponseHeaderBytes: limit}
		defer tr.CloseIdleConnections()
		addr := earlyUpstream(t, answer, true)
		resp, err := upload(t, tr, addr)
		check(t, resp, err)
	})
	t.Run("pool", func(t *testing.T) {
		addr := earlyUpstream(t, answer, true)
		p := NewPool(PoolConfig{MaxResponseHeadBytes: limit, Dial: func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		}})
		defer p.Close(true)
		resp, err := upload(t, p, addr)
		check(t, resp, err)
	})
}

// wantError fails t unless the exchange failed.
func wantError(t *testing.T, resp *http.Response, err error) {
	t.Helper()
	if err == nil {
		resp.Body.Close()
		t.Fatalf("status %d, want an error", resp.StatusCode)
	}
}

// TestPoolBadInterimDuringUpload: a 1xx head that http.ReadResponse
// refuses (a header line without a colon, an unknown transfer coding),
// sent while the upload is stalled, fails the exchange, as net/http's
// Transport fails it; the answer after it is not read. The stall hook
// dropped the refused head (gathered whole, if longer than the pool's
// buffer, or read in part) and the pool returned the 413 after it.
func TestPoolBadInterimDuringUpload(t *testing.T) {
	long := strings.TrimSuffix(longHints(6<<10), "\r\n")
	for name, head := range map[string]string{
		"long, malformed line":       long + "Link </b.css>; rel=preload\r\n\r\n",
		"long, Transfer-Encoding":    long + "Transfer-Encoding: foo\r\n\r\n",
		"short, malformed line":      "HTTP/1.1 103 Early Hints\r\nLink </b.css>; rel=preload\r\n\r\n",
		"short, Transfer-Encoding":   "HTTP/1.1 103 Early Hints\r\nTransfer-Encoding: foo\r\n\r\n",
		"102 then long, bad line":    "HTTP/1.1 102 Processing\r\n\r\n" + long + "Link </b.css>\r\n\r\n",
		"long, bad line, then a 102": long + "Link </b.css>\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			sideBySide(t, head+tooBig, 0, wantError)
		})
	}
}

// TestPoolInterimTotalBounded: an endpoint that sends 1xx heads on and on
// (here past a small MaxResponseHeadBytes) while it reads none of the
// request body fails the exchange, as net/http's Transport fails it: it
// counts every 1xx head of a response, and the final head, against one
// MaxResponseHeaderBytes. The pool counted no 1xx head read while the
// upload was stalled, and held the upload for as long as they came.
func TestPoolInterimTotalBounded(t *testing.T) {
	const limit = 16 << 10
	for name, head := range map[string]string{
		"short":       "HTTP/1.1 102 Processing\r\n\r\n",
		"6 KiB":       longHints(6 << 10),
		"3 KiB":       longHints(3 << 10),
		"with fields": "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			heads := strings.Repeat(head, 2*limit/len(head)+1) // twice the limit
			sideBySide(t, heads, limit, wantError)
		})
	}
}

// TestPoolInterimTotalAcrossStall: the 1xx heads read while the upload is
// stalled and those read after it share one MaxResponseHeadBytes with the
// final head, as in net/http's Transport: each part fits, their sum does
// not, and the exchange fails. The pool counted only the heads read after
// the write, and returned the 200.
func TestPoolInterimTotalAcrossStall(t *testing.T) {
	const limit, size = 8 << 10, 8 << 20
	processing := "HTTP/1.1 102 Processing\r\n\r\n"
	during := strings.Repeat(processing, 6<<10/len(processing)) // 6 KiB
	after := strings.Repeat(processing, 4<<10/len(processing))  // 4 KiB
	var stalls atomic.Int64
	// stalled waits until the pool's stall hook ran four times after the
	// call: enough for it to read the heads sent before (4 KiB each).
	stalled := func() bool { return moreStalls(&stalls, 4) }
	for name, rt := range map[string]func(addr string) http.RoundTripper{
		"net/http": func(string) http.RoundTripper { return &http.Transport{MaxResponseHeaderBytes: limit} },
		"pool": func(addr string) http.RoundTripper {
			p := NewPool(PoolConfig{MaxResponseHeadBytes: limit, Dial: func(ctx context.Context) (net.Conn, error) {
				var d net.Dialer
				c, err := d.DialContext(ctx, "tcp", addr)
				if err == nil {
					c.(*net.TCPConn).SetWriteBuffer(smallBuffers)
				}
				return c, err
			}})
			p.testHookStall = func() { stalls.Add(1) }
			return p
		},
	} {
		t.Run(name, func(t *testing.T) {
			u := startUpstream(t, func(c net.Conn, req *http.Request) bool {
				c.(*net.TCPConn).SetReadBuffer(smallBuffers)
				io.WriteString(c, during)
				if name == "pool" && !stalled() { // read while the write waits
					return false
				}
				if _, err := io.Copy(io.Discard, req.Body); err != nil {
					return false
				}
				io.WriteString(c, after+"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				return false
			})
			rt := rt(u.ln.Addr().String())
			defer func() {
				if p, ok := rt.(*Pool); ok {
					p.Close(true)
				} else {
					rt.(*http.Transport).CloseIdleConnections()
				}
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "POST", "http://"+u.ln.Addr().String()+"/upload", io.LimitReader(zeros{}, size))
			req.ContentLength = size
			resp, err := rt.RoundTrip(req)
			if err == nil {
				resp.Body.Close()
				t.Fatalf("status %d, want an error: %d bytes of 1xx heads, past the %d-byte limit", resp.StatusCode, len(during)+len(after), limit)
			}
			if ctx.Err() != nil {
				t.Fatalf("error %v: the endpoint timed out, not the limit", err)
			}
		})
	}
}

// chunks reads b in pieces of the sizes cuts gives in turn (each byte plus
// one; none: all at once).
type chunks struct {
	b    []byte
	cuts []byte
	i    int
}

func (r *chunks) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := len(p)
	if len(r.cuts) > 0 {
		n = min(n, int(r.cuts[r.i%len(r.cuts)])+1)
		r.i++
	}
	n = copy(p, r.b[:min(n, len(r.b))])
	r.b = r.b[n:]
	return n, nil
}

// FuzzLongInterimSplit holds the gathering of a long interim head across
// reads (gatherInterim, finishInterim) to headEnd and http.ReadResponse on
// the whole: however the bytes are split, it ends the head where headEnd
// ends it, leaves what follows unread, and refuses or drops the head as
// ReadResponse reads it.
func FuzzLongInterimSplit(f *testing.F) {
	long := longHints(6 << 10)
	for _, tc := range []struct {
		head string
		cuts []byte
	}{
		{long + "HTTP/1.1 200 OK\r\n\r\n", nil},
		{long, []byte{255, 17, 3}},
		{long, []byte{0}},
		{"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nrest", []byte{43, 0, 0}},     // CR LF CR LF split at each byte
		{"HTTP/1.1 103 Early Hints\nLink: </a.css>\n\nrest", []byte{38, 0}},              // LF LF split
		{"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\n\r\nrest", []byte{39, 0, 0}},       // LF CR LF split
		{"HTTP/1.1 103 Early Hints\r\nLink </a.css>\r\n\r\nHTTP/1.1 413 x\r\n\r\n", nil}, // malformed line
		{"HTTP/1.1 103 Early Hints\r\nTransfer-Encoding: foo\r\n\r\n", []byte{5}},
		{"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", []byte{1}},
		{"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n", []byte{7}}, // no end
	} {
		f.Add([]byte(tc.head), tc.cuts)
	}
	f.Fuzz(func(t *testing.T, b, cuts []byte) {
		pc := &poolConn{
			p:    &Pool{cfg: PoolConfig{MaxResponseHeadBytes: 1 << 30}},
			br:   bufio.NewReaderSize(&chunks{b: b, cuts: cuts}, 16),
			long: []byte{},
		}
		err := pc.finishInterim()
		end := headEnd(b)
		if end < 0 {
			if err != io.EOF || !bytes.Equal(pc.long, b) {
				t.Fatalf("%q with no head end: error %v, gathered %q", b, err, pc.long)
			}
			return
		}
		if pc.long != nil {
			t.Fatalf("%q: still gathering after its head", b)
		}
		if rest, _ := io.ReadAll(pc.br); !bytes.Equal(rest, b[end:]) {
			t.Fatalf("%q: left %q after the head, want %q", b, rest, b[end:])
		}
		resp, rerr := http.ReadResponse(bufio.NewReader(bytes.NewReader(b[:end])), nil)
		switch {
		case rerr != nil:
			if !errors.Is(err, errBadInterim) || pc.bad != err {
				t.Fatalf("%q: ReadResponse refuses it (%v), gathering gave %v (bad %v)", b[:end], rerr, err, pc.bad)
			}
		case resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols:
			if err != nil {
				t.Fatalf("%q: an interim head, gathering gave %v", b[:end], err)
			}
		default:
			if !errors.Is(err, errLongInterim) {
				t.Fatalf("%q: a final %d, gathering gave %v", b[:end], resp.StatusCode, err)
			}
		}
	})
}

// moreStalls waits until stalls (a pool's stall hook's count) grew by n,
// for at most 10 s: false if it did not.
func moreStalls(stalls *atomic.Int64, n int64) bool {
	want := stalls.Load() + n
	deadline := time.Now().Add(10 * time.Second)
	for stalls.Load() < want {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond) // poll interval
	}
	return true
}

// uploadedOnOneConn checks resp, the answer to an upload of size bytes to
// an endpoint that answers with their count: 200 and that count; and that
// nothing of the interim heads before it is left to be read as the next
// answer: the connection is reused, and the next answer is its own.
func uploadedOnOneConn(t *testing.T, p *Pool, u *upstream, resp *http.Response, size int) {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || string(b) != strconv.Itoa(size) {
		t.Fatalf("status %d body %q (%v), want 200 %q", resp.StatusCode, b, err, strconv.Itoa(size))
	}
	if code, body := get(t, p, "GET", ""); code != 200 || body != "ok" {
		t.Fatalf("next request on the connection: %d %q", code, body)
	}
	if n := u.accepted.Load(); n != 1 {
		t.Fatalf("%d connections, want 1 (reused)", n)
	}
}
