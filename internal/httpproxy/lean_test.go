package httpproxy

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"unsafe"
)

// The lean parses (lean.go) against net/http's: whatever a lean parse
// accepts, net/http accepts and reads the same (every field of the message,
// the body, the bytes left after it); whatever it declines, it leaves
// unread.

var leanResponseSeeds = []string{
	"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok",
	"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n",
	"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nx-a: 1\r\nX-A:  2 \r\n\r\n",
	// A name met again after others (leanFields' second pass), three times.
	"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nContent-Length: 0\r\nSet-Cookie: b=2\r\nX-Y: z\r\nset-cookie: c=3\r\n\r\n",
	"HTTP/1.1 200 OK\r\nX-Y: 1\r\nContent-Type: a\r\nX-Z: 2\r\nContent-Length: 1\r\ncontent-type: b\r\n\r\nx",
	"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhel",
	"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, Close\r\n\r\nhello",
	"HTTP/1.1 200 \r\nContent-Length: 1\r\n\r\nx",
	"HTTP/1.1 200\r\nContent-Length: 1\r\n\r\nx",
	"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 007\r\nRetry-After: 1\r\n\r\n1234567",
	"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
	"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
	"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n folded\r\n\r\nok",
	"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
	"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
	"HTTP/1.1 200 OK\r\nBad Name: 1\r\nContent-Length: 2\r\n\r\nok",
	"HTTP/1.1 200 OK\r\nX: a\x01b\r\nContent-Length: 2\r\n\r\nok",
	"HTTP/1.1 200 OK\r\nX: caf\xc3\xa9\r\nContent-Length: 2\r\n\r\nok",
	"HTTP/1.1 204 No Content\r\nContent-Length: 2\r\n\r\n",
	"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
	"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
	"HTTP/1.1 200 OK\r\nPragma: no-cache\r\nContent-Length: 2\r\n\r\nok",
	"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n",
	"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
	"HTTP/1.1 200 O\rK\r\nContent-Length: 2\r\n\r\nok",
}

func FuzzLeanResponse(f *testing.F) {
	for _, s := range leanResponseSeeds {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, data []byte, head bool) { fuzzLeanResponse(t, data, head) })
}

func fuzzLeanResponse(t *testing.T, data []byte, head bool) (took bool) {
	req, _ := http.NewRequest(http.MethodGet, "http://x/", nil)
	if head {
		req.Method = http.MethodHead
	}
	pc := &poolConn{br: bufio.NewReaderSize(bytes.NewReader(data), BufSize)}
	pc.br.Peek(1)
	buffered := pc.br.Buffered()
	got := pc.leanResponse(req)
	if got == nil {
		if pc.br.Buffered() != buffered {
			t.Fatalf("declined %q but consumed %d bytes", data, buffered-pc.br.Buffered())
		}
		return false
	}
	ref := bufio.NewReaderSize(bytes.NewReader(data), BufSize)
	want, err := http.ReadResponse(ref, req)
	if err != nil {
		t.Fatalf("lean read %q, net/http refuses it: %v", data, err)
	}
	for _, r := range []*http.Response{got, want} {
		if r.Body == http.NoBody {
			r.Body = nil
		}
	}
	gb, gerr := readAllKeep(got.Body)
	wb, werr := readAllKeep(want.Body)
	got.Body, want.Body = nil, nil
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%q:\nlean     %+v\nnet/http %+v", data, got, want)
	}
	if !bytes.Equal(gb, wb) || (gerr == nil) != (werr == nil) {
		t.Fatalf("%q: body %q (%v), net/http %q (%v)", data, gb, gerr, wb, werr)
	}
	grest, _ := io.ReadAll(pc.br)
	wrest, _ := io.ReadAll(ref)
	if !bytes.Equal(grest, wrest) {
		t.Fatalf("%q: left %q, net/http %q", data, grest, wrest)
	}
	fuzzRawResponse(t, data, want.Header)
	return true
}

// fuzzRawResponse checks a head the lean parse took (data) read as the
// fast path reads it, where a plain head's fields may stay raw: it is read
// the same (want, net/http's header), looked up the same, made the same
// map, and what WriteResponse passes on reads back, in net/http, as the
// header the map path writes.
func fuzzRawResponse(t *testing.T, data []byte, want http.Header) {
	t.Helper()
	read := func(raw bool) *http.Response {
		t.Helper()
		var hb HeaderBuf
		ctx := context.Background()
		if raw {
			ctx = WithResponseHeaderBuf(ctx, &hb)
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://x/", nil)
		pc := &poolConn{br: bufio.NewReaderSize(bytes.NewReader(data), BufSize)}
		pc.br.Peek(1)
		resp := pc.leanResponse(req)
		if resp == nil {
			t.Fatalf("%q: taken without a HeaderBuf, declined with one (raw %v)", data, raw)
		}
		return resp
	}
	written := func(resp *http.Response) *http.Response {
		t.Helper()
		var out bytes.Buffer
		bw := bufio.NewWriter(&out)
		resp.Body = http.NoBody // the header is what is compared; data may lack the body
		if err := WriteResponse(bw, resp, resp.Request, true, nil); err != nil {
			t.Fatalf("%q: WriteResponse: %v", data, err)
		}
		back, err := http.ReadResponse(bufio.NewReader(&out), resp.Request)
		if err != nil {
			t.Fatalf("%q: net/http refuses what WriteResponse wrote (%q): %v", data, out.Bytes(), err)
		}
		back.Body.Close()
		return back
	}
	resp := read(true)
	if _, raw := rawOf(resp); !raw {
		if resp.Header == nil {
			t.Fatalf("%q: neither a header nor raw fields", data)
		}
		return // not plain (hop-by-hop fields, Connection): the map path, checked above
	}
	for k := range want {
		if got := ResponseField(resp, k); got != want.Get(k) {
			t.Fatalf("%q: raw field %s is %q, net/http's %q", data, k, got, want.Get(k))
		}
	}
	if got := ResponseField(resp, "X-Absent"); got != "" {
		t.Fatalf("%q: raw field X-Absent is %q", data, got)
	}
	passed := written(resp)
	viaMap := written(read(false))
	if !reflect.DeepEqual(passed.Header, viaMap.Header) || passed.ContentLength != viaMap.ContentLength ||
		passed.StatusCode != viaMap.StatusCode || passed.Status != viaMap.Status {
		t.Fatalf("%q: passed on raw reads back as %d %+v, written from the map as %d %+v",
			data, passed.ContentLength, passed.Header, viaMap.ContentLength, viaMap.Header)
	}
	if h := ResponseHeader(resp); !reflect.DeepEqual(h, want) {
		t.Fatalf("%q: raw fields made %+v, net/http's header %+v", data, h, want)
	}
	if _, raw := rawOf(resp); raw {
		t.Fatalf("%q: still raw after ResponseHeader", data)
	}
	rawTaken++
}

// rawTaken counts the heads fuzzRawResponse saw left raw.
var rawTaken int

// TestRawResponse: a plain head's fields are passed on byte for byte
// (names as the endpoint spelt them); a head with a hop-by-hop field is
// parsed into a map and written without it; a retry's response read while
// a raw one is held gets a map, and the held one still reads right.
func TestRawResponse(t *testing.T) {
	var hb HeaderBuf
	req, _ := http.NewRequestWithContext(WithResponseHeaderBuf(context.Background(), &hb), http.MethodGet, "http://x/", nil)
	read := func(head string) *http.Response {
		t.Helper()
		pc := &poolConn{br: bufio.NewReaderSize(strings.NewReader(head), BufSize)}
		pc.br.Peek(1)
		resp := pc.leanResponse(req)
		if resp == nil {
			t.Fatalf("declined %q", head)
		}
		return resp
	}
	write := func(resp *http.Response) string {
		t.Helper()
		var out bytes.Buffer
		bw := bufio.NewWriter(&out)
		if err := WriteResponse(bw, resp, req, true, nil); err != nil {
			t.Fatal(err)
		}
		return out.String()
	}
	const plain = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nX-Id:  1 \r\nContent-Length: 2\r\n\r\nok"
	first := read(plain)
	if first.Header != nil {
		t.Fatalf("a plain head was parsed into a map: %v", first.Header)
	}
	retry := read("HTTP/1.1 503 No\r\nX-Id: 2\r\nContent-Length: 0\r\n\r\n")
	if retry.Header.Get("X-Id") != "2" {
		t.Errorf("the retry's response, read while a raw one is held: header %v", retry.Header)
	}
	if got := ResponseField(first, "X-Id"); got != "1" {
		t.Errorf("the held raw response's X-Id is %q", got)
	}
	if got := write(first); got != plain {
		t.Errorf("passed on %q, want %q", got, plain)
	}
	hb.Done()
	hop := read("HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nok")
	if hop.Header == nil {
		t.Fatal("a head with a hop-by-hop field was left raw")
	}
	if got := write(hop); strings.Contains(strings.ToLower(got), "keep-alive") {
		t.Errorf("the hop-by-hop field was passed on: %q", got)
	}
}

type leanKey struct{}

func readAllKeep(r io.Reader) ([]byte, error) {
	if r == nil {
		return nil, nil
	}
	return io.ReadAll(r)
}

var leanRequestSeeds = []string{
	"GET / HTTP/1.1\r\nHost: bench.demo\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n",
	"GET /a?b=c HTTP/1.1\r\nHost: h\r\n\r\nGET / HTTP/1.1\r\n",
	"DELETE /a%20b/%2F HTTP/1.1\r\nhost: h:80\r\nconnection: Close\r\naccept: a\r\nAccept: b\r\n\r\n",
	// A name met again after others and a Host (scannedFields' fieldValues),
	// three times; a second Host after a repeated name.
	"GET / HTTP/1.1\r\nX-A: 1\r\nHost: h\r\nx-b: 2\r\nX-A: 3\r\nx-a: 4\r\nCookie: c\r\n\r\n",
	"GET /x HTTP/1.1\r\nAccept: a\r\naccept: b\r\nHost: h\r\nHost: h\r\n\r\n",
	"GET //x/y HTTP/1.1\r\nHost: h\r\n\r\n",
	"GET /x HTTP/1.1\r\nHost: h\r\nHost: i\r\n\r\n",
	"GET /x HTTP/1.1\r\n\r\n",
	"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx",
	"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
	"GET /x HTTP/1.0\r\nHost: h\r\n\r\n",
	"GET http://h/x HTTP/1.1\r\nHost: h\r\n\r\n",
	"get /x HTTP/1.1\r\nHost: h\r\n\r\n",
	"GET /x\x7f HTTP/1.1\r\nHost: h\r\n\r\n",
	"GET /x HTTP/1.1\r\nHost: h\r\n X: folded\r\n\r\n",
	"GET /x HTTP/1.1\nHost: h\n\n",
	"GET /x HTTP/1.1\r\nHost: h\r\nPragma: no-cache\r\n\r\n",
	"GET /x  HTTP/1.1\r\nHost: h\r\n\r\n",
	"GET /x HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.2.3.4\r\nX: \t v \t\r\n\r\n",
	"GET /x HTTP/1.1\r\nHost:\r\n\r\n",
	"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
	"CONNECT /x HTTP/1.1\r\nHost: h\r\n\r\n",
	"GET /x HTTP/1.1\r\nHost: h\r\nupgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
	"GET /x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n",
	// For headScan: not whole yet; a bare CR in a value; a non-ASCII
	// value byte; names canonical and not, one with '_' and one
	// "x-Y"; Connection with close among other tokens.
	"GET / HTTP/1.1\r\nHost: h\r\n",
	"GET / HTTP/1.1\r\nHost: h\r\n\r",
	"GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: h\r\nX: \xe2\x82\xac\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: h\r\nX_Y: 1\r\nx-Y: 2\r\nX-y: 3\r\nconnection: keep-alive, close\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: h\r\nX\x00: 1\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: h\r\n: 1\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: h\r\nX\r\n\r\n",
}

func FuzzLeanRequest(f *testing.F) {
	for _, s := range leanRequestSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) { fuzzLeanRequest(t, data) })
}

func fuzzLeanRequest(t *testing.T, data []byte) (took bool) {
	took = fuzzLeanRequestAfter(t, data, false)
	if fuzzLeanRequestAfter(t, data, true) != took {
		t.Fatalf("%q: taken after a recycled request %t, else %t", data, !took, took)
	}
	return took
}

// fuzzLeanRequestAfter is fuzzLeanRequest with a HeaderBuf that read an
// earlier request: its header reused within that request, or, recycled,
// the earlier request's map and leanReq (HeaderBuf.Recycle).
func fuzzLeanRequestAfter(t *testing.T, data []byte, recycled bool) (took bool) {
	var hb HeaderBuf
	prev := bufio.NewReader(strings.NewReader(leanRequestSeeds[2]))
	prev.Peek(1)
	if LeanRequest(context.Background(), prev, &hb) == nil {
		t.Fatal("declined the earlier request")
	}
	if recycled {
		hb.Recycle()
	}
	ctx := context.WithValue(context.Background(), leanKey{}, 1)
	br := bufio.NewReaderSize(bytes.NewReader(data), BufSize)
	br.Peek(1)
	buffered := br.Buffered()
	var got *http.Request
	if recycled { // and as the fast path calls it: the head's length from its own search (PeekHeader's)
		b, _ := br.Peek(buffered)
		got = LeanRequestHead(ctx, br, &hb, headEnd(b))
	} else {
		got = LeanRequest(ctx, br, &hb)
	}
	if got == nil {
		if br.Buffered() != buffered {
			t.Fatalf("declined %q but consumed %d bytes", data, buffered-br.Buffered())
		}
		return false
	}
	if ok, clte := Eligible(data[:headEnd(data)]); !ok || clte {
		// The fast path skips Eligible for a head LeanRequest reads.
		t.Fatalf("%q: read lean, but Eligible %t (clte %t)", data, ok, clte)
	}
	if c, l := CheckRequest(got), CheckLeanRequest(got); c != l {
		t.Fatalf("%q: CheckRequest %q, CheckLeanRequest %q", data, c, l)
	}
	ref := bufio.NewReaderSize(bytes.NewReader(data), BufSize)
	want, err := http.ReadRequest(ref)
	if err != nil {
		t.Fatalf("lean read %q, net/http refuses it: %v", data, err)
	}
	want = want.WithContext(ctx)
	if got.Body != http.NoBody || want.Body != http.NoBody {
		t.Fatalf("%q: bodies %v, net/http %v; want none", data, got.Body, want.Body)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%q:\nlean     %+v\nnet/http %+v", data, got, want)
	}
	grest, _ := io.ReadAll(br)
	wrest, _ := io.ReadAll(ref)
	if !bytes.Equal(grest, wrest) {
		t.Fatalf("%q: left %q, net/http %q", data, grest, wrest)
	}
	return true
}

// TestLeanParsesTaken: the plain heads of the benchmarks take the lean
// parses (a change that declined them would still pass the fuzz tests).
func TestLeanParsesTaken(t *testing.T) {
	br := bufio.NewReaderSize(bytes.NewReader([]byte(leanRequestSeeds[0])), BufSize)
	br.Peek(1)
	if LeanRequest(context.Background(), br, nil) == nil {
		t.Errorf("declined %q", leanRequestSeeds[0])
	}
	req, _ := http.NewRequest(http.MethodGet, "http://x/", nil)
	pc := &poolConn{br: bufio.NewReaderSize(bytes.NewReader([]byte(leanResponseSeeds[0])), BufSize)}
	pc.br.Peek(1)
	if pc.leanResponse(req) == nil {
		t.Errorf("declined %q", leanResponseSeeds[0])
	}
}

// TestResponseHeaderBufHeld: a response holding its connection's
// HeaderBuf keeps its header while later responses (a retry's) are read;
// once the request is done, the next response gets a header of its own:
// a header is never reused for another request (HeaderBuf). The heads
// have a Connection field, so they are parsed into maps (not left raw).
func TestResponseHeaderBufHeld(t *testing.T) {
	var hb HeaderBuf
	req, _ := http.NewRequest(http.MethodGet, "http://x/", nil)
	req = req.WithContext(WithResponseHeaderBuf(context.Background(), &hb))
	read := func(id string) *http.Response {
		t.Helper()
		pc := &poolConn{br: bufio.NewReaderSize(strings.NewReader("HTTP/1.1 503 No\r\nX-Id: "+id+"\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"), BufSize)}
		pc.br.Peek(1)
		resp := pc.leanResponse(req)
		if resp == nil {
			t.Fatal("declined")
		}
		return resp
	}
	first := read("1")
	second := read("2") // first still held: a header of its own
	if got := first.Header.Get("X-Id"); got != "1" {
		t.Errorf("the first response's X-Id is %q after the second was read", got)
	}
	hb.Done()
	third := read("3")
	if reflect.ValueOf(third.Header).UnsafePointer() == reflect.ValueOf(first.Header).UnsafePointer() {
		t.Errorf("the header of a done request was reused for the next one")
	}
	if second.Header.Get("X-Id") != "2" || third.Header.Get("X-Id") != "3" {
		t.Errorf("X-Id %q, %q; want 2, 3", second.Header.Get("X-Id"), third.Header.Get("X-Id"))
	}
}

// TestLeanGenerated runs both differential checks over heads built from
// the pieces the lean parses decide on (names in any case, values with
// edge bytes, framing fields, request lines and status lines near the
// subset's edges), mostly plain: random bytes rarely make a head the lean
// parses take.
func TestLeanGenerated(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	pick := func(s ...string) string { return s[rng.IntN(len(s))] }
	odd := func() bool { return rng.IntN(12) == 0 } // the edge case, else the plain one
	field := func() string {
		switch {
		case odd():
			return pick(" folded", "\tx", "noColon", ":v", "X A: v", "X-A : v", "X-\xc3\x9c: v")
		case odd():
			return pick("Host", "host", "Content-Length", "Transfer-Encoding", "Pragma", "Trailer", "Upgrade", "Expect") + ": " +
				pick("", "1", "chunked", "no-cache", "h", "websocket", "100-continue")
		case odd():
			return "X-A:" + pick("", " ", "  v", "v ", "\tv\t", "caf\xc3\xa9", "a\x01b", "a\x7fb", "a\rb", "a,b")
		}
		return pick("X-A", "x-a", "Accept", "user-agent", "Cache-Control", "X_b", "Connection", "connection") + ": " +
			pick("v", "*/*", "close", "Close, keep-alive", "keep-alive", "max-age=0", "1")
	}
	eol := func() string {
		if odd() {
			return pick("\n", "\r", "\r\r\n")
		}
		return "\r\n"
	}
	head := func(first, must string) string {
		s := first + eol()
		lines := []string{}
		for range rng.IntN(5) {
			lines = append(lines, field())
		}
		if !odd() {
			lines = append(lines, must)
		}
		if odd() {
			lines = append(lines, must)
		}
		rng.Shuffle(len(lines), func(i, j int) { lines[i], lines[j] = lines[j], lines[i] })
		for _, l := range lines {
			s += l + eol()
		}
		return s + eol() + pick("", "ok", "hello world", "HTTP/1.1 200 OK\r\n")
	}
	accepted := [2]int{}
	raw0 := rawTaken
	for range 20000 {
		status := "HTTP/1.1 200 OK"
		if odd() {
			status = pick("HTTP/1.1 200", "HTTP/1.1 200 ", "HTTP/1.1 204 No Content", "HTTP/1.1 304 Not Modified", "HTTP/1.1 101 Switching",
				"HTTP/1.1 599 x", "HTTP/1.1 600 x", "HTTP/1.0 200 OK", "HTTP/1.1  200 OK", "HTTP/1.1 20 OK", "HTTP/1.1 2000 OK",
				"http/1.1 200 OK", "HTTP/1.1 200 O\tK", "HTTP/1.1 404 Not Found")
		}
		cl := "Content-Length: " + pick("0", "2", "5", "11", "007")
		if odd() {
			cl = "content-length:" + pick("", " +2", "-1", " 99999999999999999999", " 2 ", " 1 2")
		}
		resp := []byte(head(status, cl))
		line := "GET / HTTP/1.1"
		if odd() {
			line = pick("POST", "get", "DELETE", "OPTIONS", "CONNECT", "PRI", "G@T") + " " +
				pick("/", "/a?b=c", "//x", "/a%zz", "*", "http://h/x", "/a b", "/\x7f", "/\xc3\xa9", "/a%20b") + " " +
				pick("HTTP/1.1", "HTTP/1.0", "HTTP/1.1 ", "HTTP/2.0")
		}
		host := "Host: " + pick("h", "h:80", "[::1]:80", "")
		if odd() {
			host = pick("host:h", "HOST:   h  ", "Host: h h", "Host: h\x01")
		}
		req := []byte(head(line, host))
		t.Run("", func(t *testing.T) {
			if fuzzLeanResponse(t, resp, odd()) {
				accepted[0]++
			}
			if fuzzLeanRequest(t, req) {
				accepted[1]++
			}
		})
		if t.Failed() {
			return
		}
	}
	t.Logf("the lean parses took %d of the responses (%d left raw), %d of the requests", accepted[0], rawTaken-raw0, accepted[1])
	if rawTaken-raw0 < 2000 {
		t.Errorf("%d responses left raw; the generator is to make mostly plain heads", rawTaken-raw0)
	}
	if accepted[0] < 5000 || accepted[1] < 5000 {
		t.Errorf("the lean parses took %d of the responses, %d of the requests; the generator is to make mostly plain heads", accepted[0], accepted[1])
	}
}

// TestDetachResponseHeader: a response detached from its connection's
// HeaderBuf (read on in the background after its request) keeps its header
// through the connection's next responses.
func TestDetachResponseHeader(t *testing.T) {
	var hb HeaderBuf
	ctx := WithResponseHeaderBuf(context.Background(), &hb)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://x/", nil)
	read := func(id string) *http.Response {
		t.Helper()
		pc := &poolConn{br: bufio.NewReaderSize(strings.NewReader("HTTP/1.1 503 No\r\nX-Id: "+id+"\r\nContent-Length: 0\r\n\r\n"), BufSize)}
		pc.br.Peek(1)
		resp := pc.leanResponse(req)
		if resp == nil {
			t.Fatal("declined")
		}
		return resp
	}
	bg := read("1")
	DetachResponseHeader(ctx)
	hb.Done() // the request ends; the next one's response
	read("2")
	hb.Done()
	read("3")
	if got := bg.Header.Get("X-Id"); got != "1" {
		t.Errorf("the detached response's X-Id is %q after two more responses", got)
	}
}

// TestLeanTarget: every target leanTarget takes, url.ParseRequestURI
// parses the same (each byte in a path and in a query, and the query's
// edge cases); the targets it declines are url.ParseRequestURI's to parse.
func TestLeanTarget(t *testing.T) {
	targets := []string{"/", "/a", "//a", "/a?", "/a??", "/a?b?", "/a?b", "/?", "/a/../b", "/a%20b", "/a#b"}
	for c := 0; c < 256; c++ {
		b := string([]byte{byte(c)})
		targets = append(targets, "/a"+b+"z", "/a?q"+b+"z", "/a"+b+"?", "/"+b)
	}
	took := 0
	for _, target := range targets {
		var got url.URL
		if !leanTarget(&got, target) {
			continue
		}
		took++
		want, err := url.ParseRequestURI(target)
		if err != nil {
			t.Errorf("%q: taken, url.ParseRequestURI refuses it: %v", target, err)
			continue
		}
		if !reflect.DeepEqual(&got, want) {
			t.Errorf("%q: lean %#v, url %#v", target, got, *want)
		}
	}
	if took < 200 {
		t.Errorf("took only %d targets", took)
	}
}

// TestLeanAllocSizes: what a lean request and response allocate stays
// within 512 bytes, the largest objects the allocator serves without a
// malloc header (leanReq).
func TestLeanAllocSizes(t *testing.T) {
	if n := unsafe.Sizeof(leanReq{}); n > 512 {
		t.Errorf("leanReq is %d bytes, above 512", n)
	}
	if n := unsafe.Sizeof(leanResp{}); n > 512 {
		t.Errorf("leanResp is %d bytes, above 512", n)
	}
}
