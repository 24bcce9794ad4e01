package agent

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
)

// The HTTP/1.1 fast path. A client connection to a service port declared
// http is served on the goroutine that accepted it: read a request with
// http.ReadRequest, balance and retry it with the same lbTransport as the
// ReverseProxy path, forward it over a pooled persistent upstream
// connection on the same goroutine (h1Pool), and write the response back
// with one write. The net/http server and transport it replaces cost three
// goroutine hand-offs, a background read and two header maps per request;
// that was most of the ~130 µs of CPU a request cost (BENCHMARKS.md §6).
//
// Whatever the fast path does not handle goes to the net/http server with
// the bytes read so far replayed, and stays there for the rest of the
// connection: HTTP/2 (prior knowledge), upgrades (WebSocket, h2c),
// Expect: 100-continue, CONNECT, any protocol version but HTTP/1.1 (which
// also lets the server answer malformed request lines), targets that are
// not origin-form, and headers larger than h1BufSize.
//
// What the fast path serves it parses with http.ReadRequest, the parser of
// net/http's server, and then checks as that server does (checkRequest),
// so it accepts no request the server would refuse and frames every body
// as the server would (FuzzH1Differential holds it to that).

const (
	h1BufSize            = 4 << 10              // client and upstream bufio buffers
	h1HeaderTimeout      = 10 * time.Second     // as l7.srv.ReadHeaderTimeout
	h1MaxDrain           = 256 << 10            // unread request body drained before the next request, as net/http
	h1MaxIdlePerPool     = 64                   // idle upstream connections per endpoint, as MaxIdleConnsPerHost
	h1CheckIdleAfter     = time.Second          // a pooled connection idle this long is checked before use
	h1CheckIdleAfterBody = 5 * time.Millisecond // the same for requests that cannot be sent twice
)

// h1Path holds the fast path's upstream pools and its lbTransport.
type h1Path struct {
	s  *l7
	rt *lbTransport

	mu     sync.Mutex // guards the following
	pools  map[string]*h1Pool
	closed bool
}

func newH1Path(s *l7) *h1Path {
	return &h1Path{s: s, rt: &lbTransport{l7: s, h1: true}, pools: map[string]*h1Pool{}}
}

var (
	h1Readers sync.Pool // *bufio.Reader of h1BufSize
	h1Writers sync.Pool // *bufio.Writer of h1BufSize
)

func getH1Reader(r io.Reader) *bufio.Reader {
	if br, ok := h1Readers.Get().(*bufio.Reader); ok {
		br.Reset(r)
		return br
	}
	return bufio.NewReaderSize(r, h1BufSize)
}

func getH1Writer(w io.Writer) *bufio.Writer {
	if bw, ok := h1Writers.Get().(*bufio.Writer); ok {
		bw.Reset(w)
		return bw
	}
	return bufio.NewWriterSize(w, h1BufSize)
}

func putH1Reader(br *bufio.Reader) { br.Reset(nil); h1Readers.Put(br) }
func putH1Writer(bw *bufio.Writer) { bw.Reset(nil); h1Writers.Put(bw) }

// serveH1 serves one client connection of an http port until it closes,
// or hands it to the net/http server. It owns tc.
func (s *l7) serveH1(ctx context.Context, tc *taggedConn) {
	c := tc.Conn
	stop := context.AfterFunc(ctx, func() { c.Close() }) // agent shutdown
	// Writes go through tc, which bounds each (taggedConn.Write).
	br, bw := getH1Reader(c), getH1Writer(tc)
	handedOff := false
	defer func() {
		stop()
		putH1Reader(br)
		putH1Writer(bw)
		if !handedOff {
			tc.Close()
		}
	}()
	connCtx, gone := context.WithCancel(context.WithValue(context.Background(), targetKey{}, tc.target))
	defer gone()
	cs := &h1ClientConn{
		ctx:    withConnIdentity(connCtx, tc.clientID),
		remote: c.RemoteAddr().String(),
		conn:   c,
		br:     br,
		gone:   gone,
	}
	if host, _, err := net.SplitHostPort(cs.remote); err == nil {
		cs.xff = []string{host}
	}
	lastPost := false
	for {
		c.SetReadDeadline(time.Now().Add(s.h1IdleTimeout(tc.target)))
		if _, err := br.Peek(1); err != nil {
			return // closed by the client, idle timeout or shutdown
		}
		if lastPost {
			// RFC 9112 §2.2: the CRLF some clients send after a POST body,
			// skipped as net/http's server does.
			peek, _ := br.Peek(4)
			br.Discard(numLeadingCRorLF(peek))
			if _, err := br.Peek(1); err != nil {
				return
			}
		}
		hdr, err := peekHeader(br, c)
		eligible, clte := false, false
		if err == nil {
			eligible, clte = h1Eligible(hdr)
		}
		if err == errH1TooLarge || (err == nil && !eligible) {
			// The net/http server takes the connection from here on.
			c.SetReadDeadline(time.Time{})
			rest := make([]byte, br.Buffered())
			br.Read(rest)
			tc.Conn = &prefixConn{Conn: c, r: io.MultiReader(bytes.NewReader(rest), c)}
			if !stop() {
				return // shutting down: tc is closed below
			}
			handedOff = true
			if !s.ln.push(tc) {
				tc.Close()
			}
			return
		}
		if err != nil {
			return // incomplete header: client gone or header timeout, as net/http
		}
		req, err := http.ReadRequest(br)
		if err != nil {
			writeH1Status(bw, readRequestStatus(err), err.Error())
			return
		}
		lastPost = req.Method == http.MethodPost
		if clte {
			req.Close = true // RFC 9112 §6.1: close after responding
		}
		if err := s.a.normalizeRequest(req); err != nil {
			writeH1Status(bw, http.StatusBadRequest, err.Error())
			return
		}
		if req.ContentLength != 0 {
			c.SetReadDeadline(time.Time{})
			req.Body = newTimedBody(req.Body, c.SetReadDeadline) // bounded per read (l7body.go)
		}
		if !s.h1.forward(cs, bw, req) {
			return
		}
	}
}

// h1IdleTimeout is how long a client connection may wait for its next
// request: the service's timeouts.idle, capped by the server's
// IdleTimeout, as connState does for the net/http server.
func (s *l7) h1IdleTimeout(t listenTarget) time.Duration {
	if sv := s.a.view.Load().services[t.svc]; sv != nil {
		return min(l7IdleTimeout(sv), defaultL7Idle)
	}
	return defaultL7Idle
}

// h1ClientConn is what the fast path keeps per client connection.
type h1ClientConn struct {
	ctx    context.Context // carries the listenTarget for lbTransport and the client's identity; cancelled by gone
	remote string          // client address, for hashing and sessions
	xff    []string        // X-Forwarded-For: the client's IP (read-only)
	conn   net.Conn
	br     *bufio.Reader
	gone   context.CancelFunc
}

// watch notices the client closing its connection while a response
// streams (the fast path reads nothing from the client meanwhile) and then
// cancels the request: a silent stream does not keep its upstream
// connection and its request slots (l7body.go) for a client that is gone.
// stop ends the watch; the connection's read deadline is reset by the
// next request's.
func (cs *h1ClientConn) watch() (stop func()) {
	if cs.br.Buffered() > 0 {
		return func() {} // the client has sent more (pipelining): it is there
	}
	cs.conn.SetReadDeadline(time.Time{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		if _, err := cs.br.Peek(1); err != nil && !isTimeout(err) {
			cs.gone() // EOF, reset or shutdown
		}
	}()
	return func() {
		cs.conn.SetReadDeadline(aLongTimeAgo)
		<-done
	}
}

var errH1TooLarge = errors.New("request header larger than the buffer")

// peekHeader returns the request head (request line to the blank line
// that ends it) once it is in br's buffer, without consuming it.
func peekHeader(br *bufio.Reader, c net.Conn) ([]byte, error) {
	deadlineSet := false
	for {
		b, _ := br.Peek(br.Buffered())
		if n := headEnd(b); n >= 0 {
			return b[:n], nil
		}
		if len(b) >= br.Size() {
			return nil, errH1TooLarge
		}
		if !deadlineSet {
			c.SetReadDeadline(time.Now().Add(h1HeaderTimeout))
			deadlineSet = true
		}
		if _, err := br.Peek(len(b) + 1); err != nil {
			return nil, err
		}
	}
}

// headEnd returns the length of the head at the start of b, up to and
// including the blank line that ends it, or -1 if b holds no blank line
// yet. Lines end at LF, and a blank line is LF or CRLF, as net/textproto
// (http.ReadRequest) reads them; the fast path must judge the same bytes
// that ReadRequest then parses.
func headEnd(b []byte) int {
	for off := 0; ; {
		i := bytes.IndexByte(b[off:], '\n')
		if i < 0 {
			return -1
		}
		off += i + 1
		switch {
		case off < len(b) && b[off] == '\n':
			return off + 1
		case off+1 < len(b) && b[off] == '\r' && b[off+1] == '\n':
			return off + 2
		}
	}
}

// h1Eligible reports whether the fast path serves a request with this
// head: an HTTP/1.1 request with an origin-form target and one Host
// header, that asks for no upgrade and no 100-continue. Others go to the
// net/http server, which answers malformed ones. clte reports a head with
// both Content-Length and Transfer-Encoding (the connection closes after
// the response, RFC 9112 §6.1; net/http keeps it).
//
// Header names are matched as http.ReadRequest reads them: a line is a
// field when it does not start with a space or tab (obs-fold continues the
// previous one), and a name with anything but a token before the colon is
// refused after parsing (checkRequest).
func h1Eligible(hdr []byte) (ok, clte bool) {
	line, rest, _ := bytes.Cut(hdr, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	if !bytes.HasSuffix(line, []byte(" HTTP/1.1")) || bytes.HasPrefix(line, []byte("CONNECT ")) || bytes.HasPrefix(line, []byte("PRI ")) {
		return false, false
	}
	// Origin-form only: the Host header is then the request's host, and
	// the absolute form (whose Host header net/http still checks) and
	// "*" are the server's.
	if sp := bytes.IndexByte(line, ' '); sp < 0 || sp+1 >= len(line) || line[sp+1] != '/' {
		return false, false
	}
	hosts, cl, te := 0, false, false
	for len(rest) > 0 {
		line, rest, _ = bytes.Cut(rest, []byte("\n"))
		switch {
		case hasPrefixFold(line, "upgrade:") || hasPrefixFold(line, "expect:"):
			return false, false
		case hasPrefixFold(line, "host:"):
			hosts++
		case hasPrefixFold(line, "content-length:"):
			cl = true
		case hasPrefixFold(line, "transfer-encoding:"):
			te = true
		}
	}
	return hosts == 1, cl && te // else the server answers 400 (http.ReadRequest drops Host)
}

func hasPrefixFold(b []byte, prefix string) bool {
	return len(b) >= len(prefix) && strings.EqualFold(string(b[:len(prefix)]), prefix)
}

// readRequestStatus is the status net/http's server answers a request it
// cannot read with.
func readRequestStatus(err error) int {
	if strings.Contains(err.Error(), "unsupported transfer encoding") {
		return http.StatusNotImplemented
	}
	return http.StatusBadRequest
}

// writeH1Status writes a plain-text error response that closes the
// connection, like the net/http server's answer to a bad request.
func writeH1Status(bw *bufio.Writer, code int, msg string) {
	body := strconv.Itoa(code) + " " + http.StatusText(code)
	if msg != "" {
		body += ": " + msg
	}
	fmt.Fprintf(bw, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s",
		code, http.StatusText(code), len(body), body)
	bw.Flush()
}

// checkRequest applies the checks net/http's server makes after parsing
// (conn.readRequest): a Host it accepts, valid header names and values.
// h1Eligible admitted an origin-form target with exactly one Host line, so
// req.Host is that line's value.
func checkRequest(req *http.Request) string {
	if !httpguts.ValidHostHeader(req.Host) {
		return "malformed Host header"
	}
	for k, vv := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return "invalid header name"
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return "invalid header value"
			}
		}
	}
	return ""
}

// numLeadingCRorLF counts the CR and LF bytes b starts with.
func numLeadingCRorLF(b []byte) int {
	n := 0
	for _, c := range b {
		if c != '\r' && c != '\n' {
			break
		}
		n++
	}
	return n
}

// clientBody marks errors reading the request body as the client's: they
// must not count against the endpoint (upstreamFailure unwraps the rest).
type clientBody struct{ r io.ReadCloser }

type clientBodyError struct{ msg string }

func (e *clientBodyError) Error() string { return "read request body: " + e.msg }

func (b clientBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF {
		err = &clientBodyError{err.Error()}
	}
	return n, err
}

func (b clientBody) Close() error { return b.r.Close() }

// forward proxies one request and writes its response; it reports whether
// the connection may carry another request.
func (p *h1Path) forward(cs *h1ClientConn, bw *bufio.Writer, in *http.Request) bool {
	if msg := checkRequest(in); msg != "" {
		writeH1Status(bw, http.StatusBadRequest, msg)
		return false
	}
	in.RemoteAddr = cs.remote
	keep := !in.Close
	hasBody := in.Body != nil && in.Body != http.NoBody
	body := in.Body
	if hasBody {
		in.Body = clientBody{body}
	}
	// The request sent on, as ReverseProxy's Rewrite makes it.
	h := in.Header
	scrubRequestHeader(h, h["Connection"])
	scrubTrailer(in.Trailer) // declared (a mirror clones them); writeRequest sends none
	setXForwarded(h, cs.xff, in.Host)
	p.s.a.setSourceIdentity(cs.ctx, in)
	in.Close = false
	// A client request from here on, as ReverseProxy makes it (mirrors go
	// through http.Transport, which insists on these).
	in.RequestURI = ""
	in.URL.Scheme = "http"
	in.URL.Host = in.Host
	if in.Host == "" { // "Host:" with no value: name the service, as the Rewrite does
		t := cs.ctx.Value(targetKey{}).(listenTarget)
		in.URL.Host = t.svc[strings.IndexByte(t.svc, '/')+1:]
	}

	resp, err := p.rt.RoundTrip(in.WithContext(cs.ctx))
	if err != nil {
		var cbe *clientBodyError
		if errors.As(err, &cbe) && !bodyTimedOut(in) {
			return false // the client broke off its body: nothing to answer
		}
		w := &h1ErrorWriter{h: http.Header{}}
		p.s.errorHandler(w, in, err)
		if w.code == 0 {
			return false
		}
		if hasBody {
			keep = keep && drainBody(body)
		}
		w.write(bw, keep)
		return bw.Flush() == nil && keep
	}
	werr := writeH1Response(bw, resp, in, keep, cs.watch)
	resp.Body.Close()
	if werr != nil {
		return false
	}
	if hasBody {
		keep = keep && drainBody(body)
	}
	return keep
}

// drainBody is drained for a request body once no endpoint reads it, within
// the service's timeouts.requestBody from now (timedBody.finish): the
// bounds were lifted when the response header arrived (or the agent
// answered), and the client watch leaves the read deadline in the past.
func drainBody(body io.Reader) bool {
	if tb, ok := body.(*timedBody); ok {
		tb.finish()
	}
	return drained(body)
}

// drained reads what is left of a request body (up to h1MaxDrain) so the
// next request can be read; false if it cannot.
func drained(body io.Reader) bool {
	n, err := io.CopyN(io.Discard, body, h1MaxDrain+1)
	return err == io.EOF && n <= h1MaxDrain
}

func headerHasToken(vv []string, token string) bool {
	for _, v := range vv {
		for sf := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(textproto.TrimString(sf), token) {
				return true
			}
		}
	}
	return false
}

// h1ErrorWriter collects what errorHandler writes.
type h1ErrorWriter struct {
	h    http.Header
	code int
	body bytes.Buffer
}

func (w *h1ErrorWriter) Header() http.Header { return w.h }

func (w *h1ErrorWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
}

func (w *h1ErrorWriter) Write(b []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return w.body.Write(b)
}

func (w *h1ErrorWriter) write(bw *bufio.Writer, keep bool) {
	fmt.Fprintf(bw, "HTTP/1.1 %d %s\r\n", w.code, http.StatusText(w.code))
	w.h.Del("Content-Length")
	writeHeader(bw, w.h)
	if !keep {
		bw.WriteString("Connection: close\r\n")
	}
	fmt.Fprintf(bw, "Content-Length: %d\r\n\r\n", w.body.Len())
	bw.Write(w.body.Bytes())
}

func writeHeader(bw *bufio.Writer, h http.Header) {
	for k, vv := range h {
		for _, v := range vv {
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(v)
			bw.WriteString("\r\n")
		}
	}
}

// upstreamBuffered is implemented by response bodies that can tell whether
// more of the body is already buffered (so a flush can wait for it).
type upstreamBuffered interface{ bufferedUpstream() int }

// writeH1Response writes resp to the client: the header and a body that is
// already buffered go out in one write; a body that arrives in parts is
// flushed as it arrives (streaming, server-sent events), watched by watch
// (if not nil) from its first part on.
func writeH1Response(bw *bufio.Writer, resp *http.Response, in *http.Request, keep bool, watch func() (stop func())) error {
	bw.WriteString("HTTP/1.1 ")
	if resp.Status != "" {
		bw.WriteString(resp.Status)
	} else {
		bw.WriteString(strconv.Itoa(resp.StatusCode) + " " + http.StatusText(resp.StatusCode))
	}
	bw.WriteString("\r\n")
	h := resp.Header
	removeHopByHop(h)
	bodyAllowed := in.Method != http.MethodHead && resp.StatusCode != http.StatusNoContent &&
		resp.StatusCode != http.StatusNotModified && resp.StatusCode >= 200
	chunked := bodyAllowed && resp.ContentLength < 0
	writeHeader(bw, h)
	if chunked {
		bw.WriteString("Transfer-Encoding: chunked\r\n")
		if len(resp.Trailer) > 0 {
			keys := make([]string, 0, len(resp.Trailer))
			for k := range resp.Trailer {
				keys = append(keys, k)
			}
			bw.WriteString("Trailer: " + strings.Join(keys, ", ") + "\r\n")
		}
	} else if bodyAllowed && len(h["Content-Length"]) == 0 {
		bw.WriteString("Content-Length: " + strconv.FormatInt(resp.ContentLength, 10) + "\r\n")
	}
	if !keep {
		bw.WriteString("Connection: close\r\n")
	}
	bw.WriteString("\r\n")
	if !bodyAllowed {
		return bw.Flush()
	}
	ub, _ := resp.Body.(upstreamBuffered)
	var w io.Writer = bw
	var cw io.WriteCloser
	if chunked {
		cw = httputil.NewChunkedWriter(bw)
		w = cw
	}
	buf := copyBuffers.Get()
	defer copyBuffers.Put(buf)
	var stopWatch func()
	defer func() {
		if stopWatch != nil {
			stopWatch()
		}
	}()
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return werr
			}
			if ub == nil || ub.bufferedUpstream() == 0 {
				if err == nil { // more to come, not buffered: let the client have this part now
					if ferr := bw.Flush(); ferr != nil {
						return ferr
					}
					if stopWatch == nil && watch != nil {
						stopWatch = watch()
					}
				}
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return err // the upstream broke off: the client sees a short body
		}
	}
	if chunked {
		endChunked(bw, cw, resp.Trailer)
	}
	return bw.Flush()
}

// endChunked ends a chunked body: the last chunk, the trailers, the blank
// line (httputil's chunked writer leaves the trailers to its caller).
func endChunked(bw *bufio.Writer, cw io.WriteCloser, trailer http.Header) {
	cw.Close()
	for k, vv := range trailer {
		for _, v := range vv {
			bw.WriteString(k + ": " + v + "\r\n")
		}
	}
	bw.WriteString("\r\n")
}
