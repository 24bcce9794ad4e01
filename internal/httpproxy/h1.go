package httpproxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
)

// The client side of an HTTP/1.1 proxy that serves requests on the
// goroutine that reads them: find a request head in the buffer (PeekHeader),
// tell whether it is one this fast framing serves (Eligible; the rest is
// net/http's server's), check a parsed request as net/http's server does
// (CheckRequest), and write a response or an error back (WriteResponse,
// ErrorWriter, WriteStatus) in one write where it can.

const (
	BufSize       = 4 << 10          // client and upstream bufio buffers
	HeaderTimeout = 10 * time.Second // longest wait for a request head, as http.Server's ReadHeaderTimeout
	MaxDrain      = 256 << 10        // unread request body drained before the next request, as net/http
)

// Client connections' buffers are recycled: GetReader and GetWriter
// return one of BufSize, PutReader and PutWriter give it back.
var (
	readers sync.Pool // *bufio.Reader of BufSize
	writers sync.Pool // *bufio.Writer of BufSize
)

func GetReader(r io.Reader) *bufio.Reader {
	if br, ok := readers.Get().(*bufio.Reader); ok {
		br.Reset(r)
		return br
	}
	return bufio.NewReaderSize(r, BufSize)
}

func GetWriter(w io.Writer) *bufio.Writer {
	if bw, ok := writers.Get().(*bufio.Writer); ok {
		bw.Reset(w)
		return bw
	}
	return bufio.NewWriterSize(w, BufSize)
}

func PutReader(br *bufio.Reader) { br.Reset(nil); readers.Put(br) }
func PutWriter(bw *bufio.Writer) { bw.Reset(nil); writers.Put(bw) }

// ErrHeaderTooLarge: the request head does not fit in the reader's
// buffer; net/http's server, with its larger limit, is to read it.
var ErrHeaderTooLarge = errors.New("request header larger than the buffer")

// PeekHeader returns the request head (request line to the blank line
// that ends it) once it is in br's buffer, without consuming it. Once
// the first bytes are in, the rest must come within HeaderTimeout (c's
// read deadline).
func PeekHeader(br *bufio.Reader, c net.Conn) ([]byte, error) {
	deadlineSet := false
	for {
		b, _ := br.Peek(br.Buffered())
		if n := headEnd(b); n >= 0 {
			return b[:n], nil
		}
		if len(b) >= br.Size() {
			return nil, ErrHeaderTooLarge
		}
		if !deadlineSet {
			c.SetReadDeadline(time.Now().Add(HeaderTimeout))
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

// Eligible reports whether the fast path serves a request with this
// head: an HTTP/1.1 request with an origin-form target and one Host
// header, that asks for no upgrade and no 100-continue. Others go to the
// net/http server, which answers malformed ones. clte reports a head with
// both Content-Length and Transfer-Encoding (the connection closes after
// the response, RFC 9112 §6.1; net/http keeps it).
//
// Header names are matched as http.ReadRequest reads them: a line is a
// field when it does not start with a space or tab (obs-fold continues the
// previous one), and a name with anything but a token before the colon is
// refused after parsing (CheckRequest).
func Eligible(hdr []byte) (ok, clte bool) {
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
		if len(line) == 0 {
			continue
		}
		// One comparison per line, by its first letter: hasPrefixFold
		// matches only ASCII bytes (a prefix's length in bytes, rune for
		// rune), and only 'U' and 'u' give 'u' with 0x20 set, and so on.
		switch line[0] | 0x20 {
		case 'u':
			if hasPrefixFold(line, "upgrade:") {
				return false, false
			}
		case 'e':
			if hasPrefixFold(line, "expect:") {
				return false, false
			}
		case 'h':
			if hasPrefixFold(line, "host:") {
				hosts++
			}
		case 'c':
			cl = cl || hasPrefixFold(line, "content-length:")
		case 't':
			te = te || hasPrefixFold(line, "transfer-encoding:")
		}
	}
	return hosts == 1, cl && te // else the server answers 400 (http.ReadRequest drops Host)
}

func hasPrefixFold(b []byte, prefix string) bool {
	return len(b) >= len(prefix) && strings.EqualFold(string(b[:len(prefix)]), prefix)
}

// ReadRequestStatus is the status net/http's server answers a request it
// cannot read with.
func ReadRequestStatus(err error) int {
	if strings.Contains(err.Error(), "unsupported transfer encoding") {
		return http.StatusNotImplemented
	}
	return http.StatusBadRequest
}

// WriteStatus writes a plain-text error response that closes the
// connection, like the net/http server's answer to a bad request.
func WriteStatus(bw *bufio.Writer, code int, msg string) {
	body := strconv.Itoa(code) + " " + http.StatusText(code)
	if msg != "" {
		body += ": " + msg
	}
	fmt.Fprintf(bw, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s",
		code, http.StatusText(code), len(body), body)
	bw.Flush()
}

// CheckRequest applies the checks net/http's server makes after parsing
// (conn.readRequest): a Host it accepts, valid header names and values.
// Eligible admitted an origin-form target with exactly one Host line, so
// req.Host is that line's value.
func CheckRequest(req *http.Request) string {
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

// CheckLeanRequest is CheckRequest for a request LeanRequest read: its
// parse checked every field's name and value as CheckRequest does (its
// fuzz test holds it to that), so only the Host is checked here.
func CheckLeanRequest(req *http.Request) string {
	if !httpguts.ValidHostHeader(req.Host) {
		return "malformed Host header"
	}
	return ""
}

// NumLeadingCRorLF counts the CR and LF bytes b starts with.
func NumLeadingCRorLF(b []byte) int {
	n := 0
	for _, c := range b {
		if c != '\r' && c != '\n' {
			break
		}
		n++
	}
	return n
}

// ClientBody marks errors reading the request body R as the client's
// (ClientBodyError): they must not count against the endpoint, and Pool
// does not take them for a stale connection.
type ClientBody struct{ R io.ReadCloser }

// ClientBodyError is a failure reading a request body from the client.
// It keeps only the message: what failed is the client's connection, not
// the one the caller checks with errors.Is.
type ClientBodyError struct{ msg string }

func (e *ClientBodyError) Error() string { return "read request body: " + e.msg }

func (b ClientBody) Read(p []byte) (int, error) {
	n, err := b.R.Read(p)
	if err != nil && err != io.EOF {
		err = &ClientBodyError{err.Error()}
	}
	return n, err
}

func (b ClientBody) Close() error { return b.R.Close() }

// DrainBody reads what is left of a request body once no endpoint reads
// it, so the connection can carry the next request; false if it cannot (more
// than MaxDrain, or an error). A TimedBody gets one gap from now
// (TimedBody.Finish): its bounds were lifted when the response header
// arrived (or the proxy answered), and a watch of the client may have left
// the read deadline in the past.
func DrainBody(body io.Reader) bool {
	if tb, ok := body.(*TimedBody); ok {
		tb.Finish()
	}
	return drained(body)
}

// drained reads what is left of a request body (up to MaxDrain) so the
// next request can be read; false if it cannot.
func drained(body io.Reader) bool {
	n, err := io.CopyN(io.Discard, body, MaxDrain+1)
	return err == io.EOF && n <= MaxDrain
}

// ErrorWriter is an http.ResponseWriter that collects a short answer of
// the proxy's own (an error handler's) for Send. Its zero value is
// ready to use.
type ErrorWriter struct {
	h    http.Header
	code int
	body bytes.Buffer
}

func (w *ErrorWriter) Header() http.Header {
	if w.h == nil {
		w.h = http.Header{}
	}
	return w.h
}

// Code is the status written so far; 0 if none (nothing to send).
func (w *ErrorWriter) Code() int { return w.code }

func (w *ErrorWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
}

func (w *ErrorWriter) Write(b []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return w.body.Write(b)
}

// Send writes the collected response to bw (not flushed), with
// "Connection: close" unless keep, and without its body if head (the
// answer to a HEAD request has none, RFC 9110 §9.3.2).
func (w *ErrorWriter) Send(bw *bufio.Writer, keep, head bool) {
	fmt.Fprintf(bw, "HTTP/1.1 %d %s\r\n", w.code, http.StatusText(w.code))
	w.h.Del("Content-Length")
	writeFields(bw, w.h)
	if !keep {
		bw.WriteString("Connection: close\r\n")
	}
	fmt.Fprintf(bw, "Content-Length: %d\r\n\r\n", w.body.Len())
	if !head {
		bw.Write(w.body.Bytes())
	}
}

func writeFields(bw *bufio.Writer, h http.Header) {
	for k, vv := range h {
		for _, v := range vv {
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(v)
			bw.WriteString("\r\n")
		}
	}
}

// UpstreamBuffered is implemented by response bodies that can tell whether
// more of the body is already buffered (so a flush can wait for it).
type UpstreamBuffered interface{ BufferedUpstream() int }

// WriteResponse writes resp to the client: the header and a body that is
// already buffered go out in one write; a body that arrives in parts is
// flushed as it arrives (streaming, server-sent events), watched by watch
// (if not nil) from its first part on.
func WriteResponse(bw *bufio.Writer, resp *http.Response, in *http.Request, keep bool, watch func() (stop func())) error {
	if err := WriteResponseUnflushed(bw, resp, in, keep, watch); err != nil {
		return err
	}
	return bw.Flush()
}

// WriteResponseUnflushed is WriteResponse without its last flush: the
// response's end (all of it, if it fits bw and did not stream) is left in
// bw for the caller to send, which must do so before it waits on anything
// (the HTTP/1.1 fast path sends it inside the read of the next request:
// RawIO.WriteRead).
func WriteResponseUnflushed(bw *bufio.Writer, resp *http.Response, in *http.Request, keep bool, watch func() (stop func())) error {
	bw.WriteString("HTTP/1.1 ")
	if validStatus(resp) {
		bw.WriteString(resp.Status)
	} else {
		bw.WriteString(strconv.Itoa(resp.StatusCode) + " " + http.StatusText(resp.StatusCode))
	}
	bw.WriteString("\r\n")
	h := resp.Header
	RemoveHopByHop(h)
	bodyAllowed := in.Method != http.MethodHead && resp.StatusCode != http.StatusNoContent &&
		resp.StatusCode != http.StatusNotModified && resp.StatusCode >= 200
	chunked := bodyAllowed && resp.ContentLength < 0
	fields, raw := rawOf(resp)
	if raw {
		// As the endpoint sent them: no hop-by-hop field, one
		// Content-Length (rawFields).
		bw.WriteString(fields)
	} else {
		writeFields(bw, h)
	}
	if chunked {
		bw.WriteString("Transfer-Encoding: chunked\r\n")
		if len(resp.Trailer) > 0 {
			keys := make([]string, 0, len(resp.Trailer))
			for k := range resp.Trailer {
				keys = append(keys, k)
			}
			bw.WriteString("Trailer: " + strings.Join(keys, ", ") + "\r\n")
		}
	} else if bodyAllowed && !raw && len(h["Content-Length"]) == 0 {
		bw.WriteString("Content-Length: " + strconv.FormatInt(resp.ContentLength, 10) + "\r\n")
	}
	if !keep {
		bw.WriteString("Connection: close\r\n")
	}
	bw.WriteString("\r\n")
	if !bodyAllowed {
		return nil
	}
	ub, _ := resp.Body.(UpstreamBuffered)
	var w io.Writer = bw
	var cw io.WriteCloser
	if chunked {
		cw = httputil.NewChunkedWriter(bw)
		w = cw
	}
	buf := CopyBuffers.Get()
	defer CopyBuffers.Put(buf)
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
			if ub == nil || ub.BufferedUpstream() == 0 {
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
	return nil
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

// validStatus reports whether resp.Status can be sent as it is: its code,
// then nothing or a space and a reason phrase of HTAB, SP, VCHAR and
// obs-text (RFC 9112 §4): no CR, LF or other control byte that
// http.ReadResponse lets through.
func validStatus(resp *http.Response) bool {
	s := resp.Status
	if len(s) < 3 || resp.StatusCode < 100 || resp.StatusCode > 999 {
		return false
	}
	for i, d := 0, 100; i < 3; i, d = i+1, d/10 {
		if s[i] != byte('0'+resp.StatusCode/d%10) {
			return false
		}
	}
	return len(s) == 3 || s[3] == ' ' && httpguts.ValidHeaderFieldValue(s[4:])
}
