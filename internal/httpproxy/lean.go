package httpproxy

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// Lean parses of the plain heads most requests and responses have: a
// whole head already in the buffer, every line ending in CRLF, fields
// "Name: value" with a token name and no obs-fold, nothing in the framing
// but one Content-Length (responses) or no body at all (requests). One
// string holds the head, and the values are its substrings: about half of
// net/http's allocations and work. Whatever falls outside that subset is
// left in the buffer for http.ReadRequest or http.ReadResponse, so the lean
// parses accept nothing net/http refuses and read what they accept as
// net/http does (FuzzLeanResponse, FuzzLeanRequest).

// leanFields parses the field lines of s (each "Name: value\r\n", the blank
// line excluded) into h as textproto.ReadMIMEHeader does, its values in
// strs (at least one per line), or reports false for a line outside the
// subset. Values and already canonical names are substrings of s. (A
// request's fields are parsed from headScan's walk: scannedFields.)
func leanFields(s string, h http.Header, strs []string) bool {
	for len(s) > 0 {
		i := strings.IndexByte(s, '\n')
		if i < 1 || s[i-1] != '\r' {
			return false
		}
		line := s[:i-1]
		s = s[i+1:]
		colon := strings.IndexByte(line, ':')
		if colon <= 0 || !httpguts.ValidHeaderFieldName(line[:colon]) {
			return false
		}
		v := line[colon+1:]
		if !httpguts.ValidHeaderFieldValue(v) {
			return false
		}
		v = trimOWS(v)
		key := textproto.CanonicalMIMEHeaderKey(line[:colon])
		if vv := h[key]; vv != nil {
			h[key] = append(vv, v)
		} else {
			vv, strs = strs[:1:1], strs[1:]
			vv[0] = v
			h[key] = vv
		}
	}
	return true
}

// framesBody: a request field of this canonical name takes the head out
// of the lean subset (LeanRequest): it frames a body, or declares
// trailers, or is Pragma (http.ReadRequest's no-cache rule), or is one
// that Eligible hands the connection to the net/http server for (Upgrade,
// Expect), so that a head LeanRequest reads is one Eligible takes and the
// fast path need not walk it again. Found as the fields are parsed, not
// by map lookups after.
func framesBody(key string) bool {
	switch key {
	case "Content-Length", "Transfer-Encoding", "Trailer", "Pragma", "Upgrade", "Expect":
		return true
	}
	return false
}

// leanHead returns the head at the start of br's buffer as a string (cut
// from a, if not nil: headArena), its first line (CR excluded) and its
// field lines, or false if the buffer holds no whole head whose lines all
// end in CRLF.
func leanHead(br *bufio.Reader, a *headArena) (head, first, fields string, ok bool) {
	b, _ := br.Peek(br.Buffered())
	n := headEnd(b)
	if n < 4 || b[n-2] != '\r' {
		return "", "", "", false
	}
	i := indexByte(b[:n], '\n')
	if i < 1 || b[i-1] != '\r' {
		return "", "", "", false
	}
	head = a.str(b[:n])
	return head, head[:i-1], head[i+1 : n-2], true
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

// leanResponse reads the response head at the start of pc's buffer when it
// is plain: HTTP/1.1, a status 200–599 but 204 and 304, one Content-Length,
// no Transfer-Encoding, Trailer or Pragma, not the answer to a HEAD. Else
// it returns nil and consumes nothing.
func (pc *poolConn) leanResponse(req *http.Request) *http.Response {
	if req.Method == http.MethodHead {
		return nil
	}
	ctx := req.Context()
	hb := rawHeaderBuf(ctx)
	var arena *headArena
	if hb != nil {
		arena = &hb.arena // not busy: this request's, on its goroutine
	}
	var head, line, fields string
	var sc *headScan // the fields found already (the fast path's), else nil
	if hb != nil {
		// One walk, as LeanRequest's; a head it does not take (not
		// whole, not plain, too many fields) is left to leanHead.
		sc = &hb.scan
		if b, _ := pc.br.Peek(pc.br.Buffered()); sc.scan(b) {
			head = arena.str(b[:sc.n])
			line, fields = head[:sc.line], head[sc.line+2:sc.n-2]
		} else {
			sc = nil
		}
	}
	if sc == nil {
		var ok bool
		if head, line, fields, ok = leanHead(pc.br, arena); !ok {
			return nil
		}
	}
	if len(line) < 12 || line[:9] != "HTTP/1.1 " {
		return nil
	}
	status := line[9:]
	if status[0] < '2' || status[0] > '5' || !isDigit(status[1]) || !isDigit(status[2]) ||
		len(status) > 3 && (status[3] != ' ' || !httpguts.ValidHeaderFieldValue(status[4:])) {
		return nil
	}
	code := int(status[0]-'0')*100 + int(status[1]-'0')*10 + int(status[2]-'0')
	if code == http.StatusNoContent || code == http.StatusNotModified {
		return nil
	}
	if hb != nil {
		if length, names, ok := rawFieldsOf(head, fields, sc); ok {
			// Kept raw: read through ResponseField, written as it came
			// (WriteResponse), made a map only if asked (ResponseHeader).
			resp := pc.newLeanResponse(hb, http.Response{Status: status, StatusCode: code, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
				ContentLength: length, Request: req, Body: http.NoBody})
			hb.busy, hb.raw, hb.rawFields, hb.rawNames = true, resp, fields, names
			pc.respond(resp, len(head), length)
			return resp
		}
	}
	h, strs := responseHeader(ctx, strings.Count(fields, "\n"))
	if !leanFields(fields, h, strs) {
		return nil
	}
	if _, ok := h["Transfer-Encoding"]; ok {
		return nil
	}
	if _, ok := h["Trailer"]; ok {
		return nil
	}
	if _, ok := h["Pragma"]; ok {
		return nil
	}
	length, ok := leanLength(h["Content-Length"])
	if !ok {
		return nil
	}
	close := httpguts.HeaderValuesContainsToken(h["Connection"], "close")
	if close {
		delete(h, "Connection") // as ReadResponse
	}
	resp := pc.newLeanResponse(nil, http.Response{Status: status, StatusCode: code, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: h, ContentLength: length, Close: close, Request: req, Body: http.NoBody})
	pc.respond(resp, len(head), length)
	return resp
}

// leanResp is a lean response and the body the pool wraps it in
// (poolConn.bodyFor): one allocation. It is reused only by the client
// connection whose HeaderBuf lent it, for its next request, once that
// connection wrote it and closed its body (HeaderBuf.RecycleResponse);
// never by the pool connection (its body's Close comes after the
// connection went back to the pool).
type leanResp struct {
	resp http.Response
	body respBody
}

// newLeanResponse returns a response r, whose respBody comes with it
// (bodyFor): hb's spare if it has one (hb: a raw response's HeaderBuf, or
// nil), which hb lends it until Done.
func (pc *poolConn) newLeanResponse(hb *HeaderBuf, r http.Response) *http.Response {
	var lr *leanResp
	if hb != nil {
		lr, hb.spareResp = hb.spareResp, nil
	}
	if lr == nil {
		lr = new(leanResp)
	}
	if hb != nil {
		hb.leanResp = lr
	}
	lr.resp = r
	pc.lean = lr
	return &lr.resp
}

// bodyFor returns a new respBody for resp: the one allocated with it if
// it is the connection's last lean response.
func (pc *poolConn) bodyFor(resp *http.Response) *respBody {
	lr := pc.lean
	pc.lean = nil
	if lr != nil && &lr.resp == resp {
		return &lr.body
	}
	return new(respBody)
}

// respond consumes a lean response's head of n bytes and gives resp its
// body of length bytes.
func (pc *poolConn) respond(resp *http.Response, n int, length int64) {
	if length > 0 {
		pc.body = lengthBody{r: pc.br, n: length}
		resp.Body = &pc.body
	}
	pc.br.Discard(n)
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// leanLength parses the one Content-Length value of a lean head (already
// trimmed): 1 to 18 digits.
func leanLength(vv []string) (int64, bool) {
	if len(vv) != 1 {
		return 0, false
	}
	return parseLength(vv[0])
}

// parseLength parses a Content-Length value of 1 to 18 digits.
func parseLength(v string) (int64, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	var n int64
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !isDigit(c) {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// lengthBody is a body of n bytes read from r, as net/http reads one with
// a Content-Length: EOF with its last bytes, io.ErrUnexpectedEOF if r ends
// first. Close is the wrapper's (respBody).
type lengthBody struct {
	r *bufio.Reader
	n int64
}

func (b *lengthBody) Read(p []byte) (int, error) {
	if b.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.n {
		p = p[:b.n]
	}
	n, err := b.r.Read(p)
	b.n -= int64(n)
	if b.n == 0 {
		return n, io.EOF
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

func (b *lengthBody) Close() error { return nil }

// LeanRequest reads the request head at the start of br's buffer when it
// is plain: an HTTP/1.1 request line with an upper-case method (not
// CONNECT or PRI) and an origin-form target, one Host field, no
// Content-Length, Transfer-Encoding, Trailer or Pragma (no body), no
// Upgrade or Expect: a head Eligible takes. Else it returns nil and consumes nothing:
// http.ReadRequest is to read it. Like http.ReadRequest, it leaves Host out
// of the header. The request has context ctx, and its header is hb's
// (nil: a new one) until hb.Done.
func LeanRequest(ctx context.Context, br *bufio.Reader, hb *HeaderBuf) *http.Request {
	return LeanRequestHead(ctx, br, hb, -1)
}

// LeanRequestHead is LeanRequest for a head of size bytes at the start of
// br's buffer, as PeekHeader found it (its length; size < 0: not known).
// The head is walked once (headScan): its end, its lines and the checks
// of its names and values in one pass, so the fast path calls it before
// PeekHeader, which then searches only heads not whole in the buffer or
// not plain.
func LeanRequestHead(ctx context.Context, br *bufio.Reader, hb *HeaderBuf, size int) *http.Request {
	var sc *headScan
	var arena *headArena
	if hb != nil {
		sc, arena = &hb.scan, &hb.arena
	} else {
		sc = new(headScan)
	}
	b, _ := br.Peek(br.Buffered())
	if !sc.scan(b) || size >= 0 && sc.n != size {
		return nil
	}
	head := arena.str(b[:sc.n])
	line := head[:sc.line]
	sp := strings.IndexByte(line, ' ')
	if sp <= 0 {
		return nil
	}
	method, rest := line[:sp], line[sp+1:]
	for i := 0; i < len(method); i++ {
		if method[i] < 'A' || method[i] > 'Z' {
			return nil
		}
	}
	if method == "CONNECT" || method == "PRI" {
		return nil
	}
	sp = strings.IndexByte(rest, ' ')
	if sp <= 0 || rest[0] != '/' || rest[sp+1:] != "HTTP/1.1" {
		return nil
	}
	target := rest[:sp]
	// The request, its URL and its header's values in one allocation.
	lr := hb.leanReq()
	h, strs := hb.take(sc.nf, lr.strs[:0])
	hosts, host, scrub, conn, ok := scannedFields(head, sc.f[:sc.nf], h, strs)
	if !ok || hosts != 1 {
		return nil
	}
	u := &lr.url
	if !leanTarget(u, target) {
		var err error
		if u, err = url.ParseRequestURI(target); err != nil {
			return nil // http.ReadRequest's to refuse
		}
	}
	if u.Host != "" {
		host = u.Host
	}
	req := &lr.req
	if hb == nil {
		*req = http.Request{}
		req = req.WithContext(ctx)
	} else {
		*req = *hb.base(ctx) // ctx set without WithContext's copy
	}
	req.Method, req.URL, req.Proto, req.ProtoMajor, req.ProtoMinor = method, u, "HTTP/1.1", 1, 1
	req.Header, req.Body, req.Host, req.RequestURI = h, http.NoBody, host, target
	req.Close = conn && httpguts.HeaderValuesContainsToken(h["Connection"], "close")
	if hb != nil {
		hb.clean = !scrub
	}
	br.Discard(len(head))
	return req
}

// scannedFields parses the field lines of head that headScan found and
// checked into h (empty) as textproto.ReadMIMEHeader does, their values in
// strs (one per line), but for the Host fields: they are counted and the
// first one's value returned instead of being added to h (http.ReadRequest
// removes them). A field framesBody names makes it report false
// (LeanRequest's to decline); scrub reports whether any name added to h is
// one ScrubRequestHeader deletes (scrubsName, scrubsCanonical: with none,
// it would leave h as it is), conn whether h has a Connection field.
func scannedFields(head string, fs []scanField, h http.Header, strs []string) (hosts int, hostValue string, scrub, conn, ok bool) {
	for i, f := range fs {
		key := fieldKey(head, f)
		v := trimOWS(head[f.colon+1 : f.end])
		switch key {
		case "Host":
			if hosts == 0 {
				hostValue = v
			}
			hosts++
			continue
		case "Connection":
			conn = true
		}
		if framesBody(key) {
			return 0, "", false, false, false // a request with a body (or trailers, Pragma): not a lean one
		}
		if !scrub {
			scrub = scrubsCanonical(key) // a valid name (checked by scan), canonical
		}
		// Set without looking the name up first: a name already there
		// (the map did not grow) is rare, and its values are then
		// gathered again from the lines so far.
		n := len(h)
		vv := strs[:1:1]
		strs = strs[1:]
		vv[0] = v
		h[key] = vv
		if len(h) == n {
			h[key] = fieldValues(head, fs[:i+1], key)
		}
	}
	return hosts, hostValue, scrub, conn, true
}

// fieldKey is the canonical name of field f of head.
func fieldKey(head string, f scanField) string {
	key := head[f.start:f.colon]
	if !f.canon {
		key = textproto.CanonicalMIMEHeaderKey(key)
	}
	return key
}

// fieldValues returns the values of the fields of head named key, in order.
func fieldValues(head string, fs []scanField, key string) []string {
	var vv []string
	for _, f := range fs {
		if fieldKey(head, f) == key {
			vv = append(vv, trimOWS(head[f.colon+1:f.end]))
		}
	}
	return vv
}

// leanReq is what LeanRequest allocates for a request: the request, its
// URL (leanTarget) and the values of a header of up to len(strs) fields
// (curl's, Go's client's and most API clients' heads). It is reused only
// on one connection, after HeaderBuf.Recycle (whose caller says nothing
// holds the request, its URL or its values then). It must stay within 512
// bytes (TestLeanAllocSizes): a larger object takes the allocator's slower
// path with a malloc header, and fewer fit a span; with 16 values here
// (and a head's bytes kept here too) BenchmarkLeanExchange was slower with
// half the allocations.
type leanReq struct {
	req  http.Request
	url  url.URL
	strs [4]string
}

// leanTarget parses an origin-form target as url.ParseRequestURI does when
// it needs no unescaping and no RawPath: a path of bytes that
// url.URL.EscapedPath leaves as they are, and a query without control or
// non-ASCII bytes (TestLeanTarget holds it to url.ParseRequestURI). Else
// it reports false and url.ParseRequestURI is to parse it.
func leanTarget(u *url.URL, target string) bool {
	path, query, hasQuery := strings.Cut(target, "?")
	if len(path) == 0 || path[0] != '/' {
		return false
	}
	for i := 0; i < len(path); i++ {
		if !leanPathByte(path[i]) {
			return false
		}
	}
	for i := 0; i < len(query); i++ {
		if c := query[i]; c <= ' ' || c >= 0x7f {
			return false
		}
	}
	*u = url.URL{Path: path, RawQuery: query, ForceQuery: hasQuery && query == ""}
	return true
}

// leanPathByte: c is kept as it is in a path by url's escaping: letters,
// digits and -._~/$&+,:;=@.
func leanPathByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	switch c {
	case '-', '.', '_', '~', '/', '$', '&', '+', ',', ':', ';', '=', '@':
		return true
	}
	return false
}
