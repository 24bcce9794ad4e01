package h2srv

import (
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/fogmesh/fogmesh/internal/h2meta"
)

// The handler's http.ResponseWriter: headers, body in DATA frames within
// the client's windows, and trailers (declared by the Trailer header or
// set with http.TrailerPrefix, as net/http's). Writers are pooled.

// hpackEncoder remembers the encodings of the fields that most responses
// repeat (h2meta.Encoder).
type hpackEncoder = *h2meta.Encoder

func encodeField(enc hpackEncoder, k, v string) { enc.WriteField(hpack.HeaderField{Name: k, Value: v}) }

const writeBuf = 16 << 10 // body bytes gathered before a DATA frame goes out

type responseWriter struct {
	st          *stream
	header      http.Header
	status      int
	wroteHeader bool
	sentHeader  bool
	done        bool // the handler returned
	head        bool
	hasDate     bool     // the header has a Date (prepareHeader)
	clen        string   // the content length prepareHeader adds; "": none
	declared    []string // trailer keys declared by the Trailer header
	trailers    []string // trailerKeys' result (its storage kept with the writer)
	contentLen  int64    // -1: none declared
	written     int64
	buf         []byte
	err         error
	// detached: the handler called Detach; async is its Async (async.go).
	detached bool
	async    Async
}

var writerPool = sync.Pool{New: func() any {
	return &responseWriter{header: http.Header{}, buf: make([]byte, 0, writeBuf)}
}}

func getWriter(st *stream) *responseWriter {
	w := writerPool.Get().(*responseWriter)
	w.st, w.contentLen, w.head = st, -1, st.req.Method == http.MethodHead
	return w
}

func putWriter(w *responseWriter) {
	clear(w.header)
	clear(w.declared)
	clear(w.trailers)
	*w = responseWriter{header: w.header, buf: w.buf[:0], declared: w.declared[:0], trailers: w.trailers[:0]}
	writerPool.Put(w)
}

func (w *responseWriter) Header() http.Header { return w.header }

func (w *responseWriter) WriteHeader(code int) {
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	if w.wroteHeader {
		return
	}
	if code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
		// Informational: sent now, the final answer still to come.
		st, sc := w.st, w.st.sc
		h := w.header
		w.err = sc.writeFrames(func() error {
			return sc.writeHeaderBlock(st.id, false, func(enc hpackEncoder) {
				encodeField(enc, ":status", strconv.Itoa(code))
				encodeHeader(enc, h, nil)
			})
		})
		return
	}
	w.wroteHeader, w.status = true, code
	if cl := w.header.Get("Content-Length"); cl != "" {
		if n, err := strconv.ParseUint(cl, 10, 63); err == nil {
			w.contentLen = int64(n)
		}
	}
}

func bodyAllowed(status int) bool {
	return !(status >= 100 && status <= 199 || status == http.StatusNoContent || status == http.StatusNotModified)
}

func (w *responseWriter) Write(p []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !bodyAllowed(w.status) {
		return 0, http.ErrBodyNotAllowed
	}
	if w.err != nil {
		return 0, w.err
	}
	if w.contentLen >= 0 && w.written+int64(len(p)) > w.contentLen {
		return 0, http.ErrContentLength
	}
	w.written += int64(len(p))
	if w.head {
		return len(p), nil
	}
	if len(w.buf)+len(p) <= cap(w.buf) {
		w.buf = append(w.buf, p...)
		return len(p), nil
	}
	if err := w.flush(false); err != nil {
		return 0, err
	}
	if len(p) < cap(w.buf) {
		w.buf = append(w.buf, p...)
		return len(p), nil
	}
	if err := w.sendData(p, false); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (w *responseWriter) WriteString(s string) (int, error) {
	if len(w.buf)+len(s) <= cap(w.buf) && w.wroteHeader && bodyAllowed(w.status) && w.err == nil &&
		(w.contentLen < 0 || w.written+int64(len(s)) <= w.contentLen) && !w.head {
		w.buf = append(w.buf, s...)
		w.written += int64(len(s))
		return len(s), nil
	}
	return w.Write([]byte(s))
}

// Flush sends the header and the body written so far.
func (w *responseWriter) Flush() { w.FlushError() }

func (w *responseWriter) FlushError() error {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return w.err
	}
	return w.flush(false)
}

// SetReadDeadline bounds the handler's reads of the request body.
func (w *responseWriter) SetReadDeadline(t time.Time) error {
	sc := w.st.sc
	sc.mu.Lock()
	w.st.readDeadline = t
	w.st.wake()
	sc.mu.Unlock()
	return nil
}

// SetWriteDeadline bounds the handler's waits for the client's window.
func (w *responseWriter) SetWriteDeadline(t time.Time) error {
	sc := w.st.sc
	sc.mu.Lock()
	w.st.writeDeadline = t
	w.st.wake()
	sc.mu.Unlock()
	return nil
}

// EnableFullDuplex: HTTP/2 always is.
func (w *responseWriter) EnableFullDuplex() error { return nil }

// flush sends the header if not yet sent, and the buffered body; end
// ends the stream, with the trailers if any. What the windows allow at
// once leaves in one write: a short answer's HEADERS, DATA and trailers.
func (w *responseWriter) flush(end bool) error {
	if w.err != nil {
		return w.err
	}
	st, sc := w.st, w.st.sc
	data := w.buf
	w.buf = w.buf[:0]
	header := !w.sentHeader
	if header {
		w.sentHeader = true
		w.prepareHeader(end, len(data))
	}
	var trailers []string
	if end {
		trailers = w.trailerKeys()
	}
	endData := end && len(trailers) == 0
	if !header && len(data) == 0 && !end {
		return nil
	}
	n := w.take(len(data))
	rest := data[n:]
	h := w.header
	err := sc.writeFrames(func() error { return w.frames(header, data, n, endData, trailers) })
	if err != nil {
		return w.fail(err)
	}
	if len(rest) == 0 {
		return nil
	}
	if err := w.sendData(rest, endData); err != nil {
		return err
	}
	if len(trailers) > 0 {
		err := sc.writeFrames(func() error {
			return sc.writeHeaderBlock(st.id, true, func(enc hpackEncoder) { encodeHeader(enc, h, trailers) })
		})
		if err != nil {
			return w.fail(err)
		}
	}
	return nil
}

// frames writes, under wmu, the header block (header), data[:n] (the rest
// of data waits for window: no END_STREAM then, and no trailers) and the
// trailers.
func (w *responseWriter) frames(header bool, data []byte, n int, endData bool, trailers []string) error {
	st, sc := w.st, w.st.sc
	rest := len(data) - n
	if header {
		st.headerOut = true
		if err := sc.writeHeaderBlock(st.id, endData && len(data) == 0, w.encodeHeaderFields); err != nil {
			return err
		}
	}
	if n > 0 || (!header && len(data) == 0 && endData) {
		if err := sc.fr.WriteData(st.id, endData && rest == 0, data[:n]); err != nil {
			return err
		}
	}
	if rest == 0 && len(trailers) > 0 {
		h := w.header
		return sc.writeHeaderBlock(st.id, true, func(enc hpackEncoder) { encodeHeader(enc, h, trailers) })
	}
	return nil
}

// prepareHeader prepares the response header (once): a Connection: close
// drains the connection, a content length is added to a response whose
// handler returned having written it all, a Date if there is none, and
// the trailers are declared. encodeHeaderFields then encodes it, in the
// flush's write (a method, not a closure made per response).
func (w *responseWriter) prepareHeader(end bool, buffered int) {
	h := w.header
	if v, ok := h["Connection"]; ok {
		delete(h, "Connection")
		if len(v) > 0 && v[0] == "close" {
			go w.st.sc.goAway(http2.ErrCodeNo, nil)
		}
	}
	w.clen = ""
	if v := h.Get("Content-Length"); v != "" {
		if _, err := strconv.ParseUint(v, 10, 63); err != nil {
			delete(h, "Content-Length")
		}
	} else if end && bodyAllowed(w.status) && (buffered > 0 || !w.head) {
		w.clen = strconv.Itoa(buffered)
	}
	for _, v := range h["Trailer"] {
		for v != "" {
			var k string
			k, v, _ = strings.Cut(v, ",")
			if k = http.CanonicalHeaderKey(strings.TrimSpace(k)); k != "" && httpguts.ValidTrailerHeader(k) {
				w.declared = append(w.declared, k)
			}
		}
	}
	_, w.hasDate = h["Date"]
}

// encodeHeaderFields encodes what prepareHeader prepared.
func (w *responseWriter) encodeHeaderFields(enc hpackEncoder) {
	encodeField(enc, ":status", strconv.Itoa(w.status))
	// Trailers are not header fields: declared ones, and those
	// promoted from http.TrailerPrefix by trailerKeys when header
	// and trailers leave in one flush.
	for k, vv := range w.header {
		if !slices.Contains(w.declared, k) && !slices.Contains(w.trailers, k) {
			encodeValues(enc, k, vv)
		}
	}
	if w.clen != "" {
		encodeField(enc, "content-length", w.clen)
	}
	if !w.hasDate {
		encodeField(enc, "date", httpDate())
	}
}

func (w *responseWriter) fail(err error) error {
	if w.err == nil {
		w.err = err
	}
	return w.err
}

// trailerKeys are the trailers to send: declared ones with a value, and
// those set with http.TrailerPrefix (promoted into the header map).
func (w *responseWriter) trailerKeys() []string {
	keys := w.trailers[:0]
	for k, vv := range w.header {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			tk := http.CanonicalHeaderKey(k[len(http.TrailerPrefix):])
			if httpguts.ValidTrailerHeader(tk) {
				w.header[tk] = vv
				keys = append(keys, tk)
			}
		}
	}
	for _, k := range w.declared {
		if len(w.header[k]) > 0 {
			keys = append(keys, k)
		}
	}
	w.trailers = keys
	return keys
}

// take reserves up to n bytes of send window without waiting.
func (w *responseWriter) take(n int) int {
	st, sc := w.st, w.st.sc
	sc.mu.Lock()
	defer sc.mu.Unlock()
	m := int64(n)
	m = min(m, st.sendWin, sc.sendWin, int64(sc.peerFrame))
	if m <= 0 || st.err != nil {
		return 0
	}
	st.sendWin -= m
	sc.sendWin -= m
	return int(m)
}

// sendData sends p in DATA frames as the windows allow; end sets
// END_STREAM on the last.
func (w *responseWriter) sendData(p []byte, end bool) error {
	st, sc := w.st, w.st.sc
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for first := true; first || len(p) > 0; first = false {
		n := 0
		for len(p) > 0 {
			sc.mu.Lock()
			if st.err != nil {
				err := st.err
				sc.mu.Unlock()
				return w.fail(err)
			}
			m := min(int64(len(p)), st.sendWin, sc.sendWin, int64(sc.peerFrame))
			if m > 0 {
				st.sendWin -= m
				sc.sendWin -= m
				st.waitingWin = false
				sc.mu.Unlock()
				n = int(m)
				break
			}
			st.waitingWin = true
			dl := st.writeDeadline
			wakeCh := waitCh(&st.winCh)
			sc.mu.Unlock()
			sc.waitingOnReader() // the client's WINDOW_UPDATE comes through the read loop
			if dl.IsZero() {
				<-wakeCh
				continue
			}
			d := time.Until(dl)
			if d <= 0 {
				return w.fail(errTimeout)
			}
			if timer == nil {
				timer = time.NewTimer(d)
			} else {
				timer.Reset(d)
			}
			select {
			case <-wakeCh:
			case <-timer.C:
			}
		}
		chunk := p[:n]
		p = p[n:]
		last := end && len(p) == 0
		if err := sc.writeFrames(func() error { return sc.fr.WriteData(st.id, last, chunk) }); err != nil {
			return w.fail(err)
		}
	}
	return nil
}

// finish ends the response after the handler returned.
func (w *responseWriter) finish() {
	w.done = true
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return
	}
	w.flush(true)
}

// encodeHeader writes the fields of h (only keys, if set), names in lower
// case, leaving out what HTTP/2 does not carry.
func encodeHeader(enc hpackEncoder, h http.Header, keys []string) {
	if keys == nil {
		for k, vv := range h {
			encodeValues(enc, k, vv)
		}
		return
	}
	for _, k := range keys {
		encodeValues(enc, k, h[k])
	}
}

func encodeValues(enc hpackEncoder, k string, vv []string) {
	switch k {
	case "Connection", "Keep-Alive", "Proxy-Connection", "Upgrade", "Transfer-Encoding":
		return
	}
	lk := lower(k)
	if lk == "" || !httpguts.ValidHeaderFieldName(lk) || lk[0] == ':' {
		return // includes "Trailer:" keys, which are sent as trailers
	}
	for _, v := range vv {
		if httpguts.ValidHeaderFieldValue(v) {
			// Credentials (set-cookie) never indexed: a connection's
			// table may be shared by many clients' streams.
			enc.WriteField(hpack.HeaderField{Name: lk, Value: v, Sensitive: h2meta.NeverIndexed(lk, v)})
		}
	}
}

// lower is k in lower case; common names are cached.
var (
	lowerCache sync.Map
	lowerCount atomic.Int32
)

func lower(k string) string {
	if v, ok := lowerCache.Load(k); ok {
		return v.(string)
	}
	for i := 0; i < len(k); i++ {
		if k[i] >= 0x80 {
			return ""
		}
	}
	l := strings.ToLower(k)
	if lowerCount.Load() < 256 {
		lowerCount.Add(1)
		lowerCache.Store(strings.Clone(k), l)
	}
	return l
}

// httpDate is the Date header's value, formatted once a second.
var dateCache atomic.Pointer[dateEntry]

type dateEntry struct {
	sec int64
	s   string
}

func httpDate() string {
	now := time.Now()
	if d := dateCache.Load(); d != nil && d.sec == now.Unix() {
		return d.s
	}
	d := &dateEntry{now.Unix(), now.UTC().Format(http.TimeFormat)}
	dateCache.Store(d)
	return d.s
}
