// Over 500 lines: one frame-level test per protocol rule, all on rawClient; split by rule they would scatter it.

package h2srv

// Frame-level tests: a raw client's frames against the server's rules.

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/fogmesh/fogmesh/internal/flowwin"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// rawConn dials addr and sends the client preface and b.
func rawConn(t *testing.T, addr string, b []byte) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.Write(append([]byte(http2.ClientPreface), b...))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	return c
}

// TestOversizedFrameGetsGoAway: a frame longer than SETTINGS_MAX_FRAME_SIZE
// is a connection error (FRAME_SIZE_ERROR), sent in a GOAWAY.
func TestOversizedFrameGetsGoAway(t *testing.T) {
	addr := serve(t, &Server{Handler: http.NotFoundHandler()})
	for _, first := range []bool{true, false} {
		var b []byte
		if !first {
			b = []byte{0, 0, 0, 4, 0, 0, 0, 0, 0} // an empty SETTINGS first
		}
		c := rawConn(t, addr, append(b, 0xff, 0xff, 0xff, 0x04, 0x00, 0, 0, 0, 0))
		fr := http2.NewFramer(nil, c)
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				t.Fatalf("first=%v: no GOAWAY before %v", first, err)
			}
			if g, ok := f.(*http2.GoAwayFrame); ok {
				if g.ErrCode != http2.ErrCodeFrameSize {
					t.Errorf("GOAWAY %v, want FRAME_SIZE_ERROR", g.ErrCode)
				}
				break
			}
		}
	}
}

// rawClient is a frame-level client: preface and SETTINGS sent.
type rawClient struct {
	t  *testing.T
	c  net.Conn
	fr *http2.Framer
}

func newRawClient(t *testing.T, addr string, settings ...http2.Setting) *rawClient {
	c := rawConn(t, addr, nil)
	fr := http2.NewFramer(c, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if err := fr.WriteSettings(settings...); err != nil {
		t.Fatal(err)
	}
	return &rawClient{t: t, c: c, fr: fr}
}

func (rc *rawClient) headers(id uint32, end bool, fields ...string) {
	rc.t.Helper()
	var b bytes.Buffer
	enc := hpack.NewEncoder(&b)
	base := []string{":method", "GET", ":scheme", "http", ":authority", "x", ":path", "/"}
	for i := 0; i+1 < len(base); i += 2 {
		over := false
		for j := 0; j+1 < len(fields); j += 2 {
			over = over || fields[j] == base[i]
		}
		if !over {
			enc.WriteField(hpack.HeaderField{Name: base[i], Value: base[i+1]})
		}
	}
	for i := 0; i+1 < len(fields); i += 2 {
		enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	if err := rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: b.Bytes(), EndStream: end, EndHeaders: true}); err != nil {
		rc.t.Fatal(err)
	}
}

// next returns the next frame that is not SETTINGS, PING or a connection
// WINDOW_UPDATE (acknowledging the server's SETTINGS).
func (rc *rawClient) next() http2.Frame {
	rc.t.Helper()
	for {
		f, err := rc.fr.ReadFrame()
		if err != nil {
			rc.t.Fatalf("read: %v", err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				rc.fr.WriteSettingsAck()
			}
			continue
		case *http2.WindowUpdateFrame:
			if f.StreamID == 0 {
				continue
			}
		}
		return f
	}
}

func status(f http2.Frame) string {
	if h, ok := f.(*http2.MetaHeadersFrame); ok {
		return h.PseudoValue("status")
	}
	return fmt.Sprintf("%T", f)
}

// TestStreamWindowRespected: with the client's stream window at 10 bytes
// the server sends 10 bytes of a 100-byte body, and the rest after a
// WINDOW_UPDATE.
func TestStreamWindowRespected(t *testing.T) {
	body := strings.Repeat("b", 100)
	addr := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, body)
	})})
	rc := newRawClient(t, addr, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 10})
	rc.headers(1, true)
	if s := status(rc.next()); s != "200" {
		t.Fatalf("first frame: %s", s)
	}
	d, ok := rc.next().(*http2.DataFrame)
	if !ok || len(d.Data()) != 10 || d.StreamEnded() {
		t.Fatalf("first DATA: %v (want 10 bytes, stream open)", d)
	}
	rc.c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if f, err := rc.fr.ReadFrame(); err == nil {
		if _, isData := f.(*http2.DataFrame); isData {
			t.Fatalf("DATA beyond the stream window: %v", f)
		}
	}
	rc.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	rc.fr.WriteWindowUpdate(1, 90)
	got := 10
	for got < 100 {
		d, ok := rc.next().(*http2.DataFrame)
		if !ok {
			t.Fatalf("want DATA, got %T", d)
		}
		got += len(d.Data())
		if d.StreamEnded() != (got == 100) {
			t.Fatalf("END_STREAM at %d bytes", got)
		}
	}
}

// TestClientOverrunsWindow: DATA past the stream window the server gave is
// a FLOW_CONTROL_ERROR.
func TestClientOverrunsWindow(t *testing.T) {
	addr := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done() // reads nothing
	})})
	rc := newRawClient(t, addr)
	rc.headers(1, false, ":method", "POST")
	chunk := make([]byte, 16384)
	for sent := 0; sent <= flowwin.Initial; sent += len(chunk) {
		if err := rc.fr.WriteData(1, false, chunk); err != nil {
			break
		}
	}
	for {
		f := rc.next()
		if g, ok := f.(*http2.GoAwayFrame); ok {
			if g.ErrCode != http2.ErrCodeFlowControl {
				t.Fatalf("GOAWAY %v, want FLOW_CONTROL_ERROR", g.ErrCode)
			}
			return
		}
	}
}

// TestResetCancelsHandler: RST_STREAM from the client cancels the
// request's context.
func TestResetCancelsHandler(t *testing.T) {
	cancelled := make(chan struct{})
	started := make(chan struct{})
	addr := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-r.Context().Done()
		close(cancelled)
	})})
	rc := newRawClient(t, addr)
	rc.headers(1, true)
	<-started
	rc.fr.WriteRSTStream(1, http2.ErrCodeCancel)
	select {
	case <-cancelled:
	case <-time.After(10 * time.Second):
		t.Fatal("handler's context not cancelled by RST_STREAM")
	}
}

// TestMaxStreams: past SETTINGS_MAX_CONCURRENT_STREAMS a stream is reset;
// the open ones go on.
func TestMaxStreams(t *testing.T) {
	release := make(chan struct{})
	addr := serve(t, &Server{MaxStreams: 2, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
	})})
	rc := newRawClient(t, addr)
	for {
		f, err := rc.fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		if s, ok := f.(*http2.SettingsFrame); ok && !s.IsAck() {
			if v, _ := s.Value(http2.SettingMaxConcurrentStreams); v != 2 {
				t.Fatalf("SETTINGS_MAX_CONCURRENT_STREAMS %d, want 2", v)
			}
			rc.fr.WriteSettingsAck()
			break
		}
	}
	rc.headers(1, true)
	rc.headers(3, true)
	rc.headers(5, true)
	f := rc.next()
	if r, ok := f.(*http2.RSTStreamFrame); !ok || r.StreamID != 5 {
		t.Fatalf("third stream: %v, want RST_STREAM on 5", f)
	}
	close(release)
	for ended := 0; ended < 2; {
		if f := rc.next(); f.Header().Flags.Has(http2.FlagHeadersEndStream) {
			ended++
		}
	}
}

// TestRefusedHeads: connection-specific fields get a 400, a header list
// past SETTINGS_MAX_HEADER_LIST_SIZE a 431, a malformed head RST_STREAM
// PROTOCOL_ERROR; the handler sees none of them.
func TestRefusedHeads(t *testing.T) {
	addr := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("handler called for %v", r.Header)
	})})
	rc := newRawClient(t, addr)
	rc.headers(1, true, "connection", "close")
	if s := status(rc.next()); s != "400" {
		t.Errorf("connection header: %s, want 400", s)
	}
	rc.next() // its body
	rc.headers(3, true, ":path", "noslash")
	if f, ok := rc.next().(*http2.RSTStreamFrame); !ok || f.ErrCode != http2.ErrCodeProtocol {
		t.Errorf("bad :path: %v, want RST_STREAM PROTOCOL_ERROR", f)
	}
	// 1.2 MB of header fields in one frame (one 4 KB field, then indexed
	// repeats of it): 431.
	var b bytes.Buffer
	enc := hpack.NewEncoder(&b)
	for _, kv := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "x"}, {":path", "/"}} {
		enc.WriteField(hpack.HeaderField{Name: kv[0], Value: kv[1]})
	}
	enc.SetMaxDynamicTableSizeLimit(4096)
	for range 300 {
		enc.WriteField(hpack.HeaderField{Name: "big", Value: strings.Repeat("v", 4000)})
	}
	if b.Len() > 16384 {
		t.Fatalf("block of %d bytes", b.Len())
	}
	rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 5, BlockFragment: b.Bytes(), EndStream: true, EndHeaders: true})
	if s := status(rc.next()); s != "431" {
		t.Errorf("large header list: %s, want 431", s)
	}
	// Past the limit with CONTINUATION frames still to come: the
	// connection ends (GOAWAY PROTOCOL_ERROR), as x/net's server does.
	rc = newRawClient(t, addr)
	big := strings.Repeat("v", 16000)
	b.Reset()
	enc = hpack.NewEncoder(&b)
	enc.WriteField(hpack.HeaderField{Name: ":method", Value: "GET"})
	rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b.Bytes(), EndStream: true})
	for i := range 80 {
		b.Reset()
		enc.WriteField(hpack.HeaderField{Name: "x", Value: big})
		if rc.fr.WriteContinuation(1, i == 79, b.Bytes()) != nil {
			break
		}
	}
	if g, ok := rc.next().(*http2.GoAwayFrame); !ok || g.ErrCode != http2.ErrCodeProtocol {
		t.Errorf("header list past the limit over CONTINUATION: %v, want GOAWAY PROTOCOL_ERROR", g)
	}
}

// TestHandlerPanicResetsStream: a handler's panic (ReverseProxy's
// http.ErrAbortHandler when an upstream body breaks) resets its stream
// with INTERNAL_ERROR; the connection goes on.
func TestHandlerPanicResetsStream(t *testing.T) {
	addr := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/abort" {
			w.WriteHeader(200)
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}
		io.WriteString(w, "ok")
	})})
	rc := newRawClient(t, addr)
	rc.headers(1, true, ":path", "/abort")
	if s := status(rc.next()); s != "200" {
		t.Fatalf("got %s", s)
	}
	if f, ok := rc.next().(*http2.RSTStreamFrame); !ok || f.ErrCode != http2.ErrCodeInternal {
		t.Fatalf("after the panic: %v, want RST_STREAM INTERNAL_ERROR", f)
	}
	rc.headers(3, true)
	if s := status(rc.next()); s != "200" {
		t.Fatalf("next stream: %s", s)
	}
}

// TestExpectContinue: a request with Expect: 100-continue gets a 100
// when the handler first reads its body.
func TestExpectContinue(t *testing.T) {
	addr := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		io.WriteString(w, string(b))
	})})
	rc := newRawClient(t, addr)
	rc.headers(1, false, ":method", "POST", "expect", "100-continue")
	if s := status(rc.next()); s != "100" {
		t.Fatalf("got %s, want 100", s)
	}
	rc.fr.WriteData(1, true, []byte("abc"))
	if s := status(rc.next()); s != "200" {
		t.Fatalf("got %s, want 200", s)
	}
	if d, ok := rc.next().(*http2.DataFrame); !ok || string(d.Data()) != "abc" {
		t.Fatalf("body %v", d)
	}
}

// TestIdleTimeout: a connection with no open stream is sent a GOAWAY and
// closed after its idle timeout.
func TestIdleTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	s := &Server{Handler: http.NotFoundHandler()}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err == nil {
			s.ServeConn(c, ConnOptions{IdleTimeout: 100 * time.Millisecond})
		}
	}()
	rc := newRawClient(t, ln.Addr().String())
	rc.headers(1, true)
	if s := status(rc.next()); s != "404" {
		t.Fatalf("got %s", s)
	}
	for {
		f := rc.next()
		if g, ok := f.(*http2.GoAwayFrame); ok {
			if g.ErrCode != http2.ErrCodeNo || g.LastStreamID != 1 {
				t.Fatalf("GOAWAY %v last %d", g.ErrCode, g.LastStreamID)
			}
			break
		}
	}
	rc.c.Close()
	<-done
}

// TestPingAcknowledged: a PING is answered (its acknowledgement waits for
// a response's flush, at most flushDelay) with the same data.
func TestPingAcknowledged(t *testing.T) {
	addr := serve(t, &Server{Handler: http.NotFoundHandler()})
	rc := newRawClient(t, addr)
	rc.fr.WritePing(false, [8]byte{1, 2, 3, 4, 5, 6, 7, 8})
	for {
		f := rc.next()
		if p, ok := f.(*http2.PingFrame); ok {
			if !p.IsAck() || p.Data != [8]byte{1, 2, 3, 4, 5, 6, 7, 8} {
				t.Fatalf("PING %v", p)
			}
			return
		}
	}
}

// writeLog records, per Write of the server, the stream ids of its frames.
type writeLog struct {
	net.Conn
	mu     sync.Mutex
	writes [][]uint32
}

func (c *writeLog) Write(p []byte) (int, error) {
	var ids []uint32
	for b := p; len(b) >= 9; {
		n := int(b[0])<<16 | int(b[1])<<8 | int(b[2])
		ids = append(ids, uint32(b[5]&0x7f)<<24|uint32(b[6])<<16|uint32(b[7])<<8|uint32(b[8]))
		if len(b) < 9+n {
			break
		}
		b = b[9+n:]
	}
	c.mu.Lock()
	c.writes = append(c.writes, ids)
	c.mu.Unlock()
	return c.Conn.Write(p)
}

// TestShortAnswerOneWrite: a short response with trailers (a unary gRPC
// answer) leaves in one write: HEADERS, DATA and trailers.
func TestShortAnswerOneWrite(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/grpc")
		io.WriteString(w, "\x00\x00\x00\x00\x02hi")
		w.Header().Set(http.TrailerPrefix+"Grpc-Status", "0")
	})}
	wl := make(chan *writeLog, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		l := &writeLog{Conn: c}
		wl <- l
		s.ServeConn(l, ConnOptions{})
	}()
	rc := newRawClient(t, ln.Addr().String())
	rc.headers(1, true, ":method", "POST")
	if s := status(rc.next()); s != "200" {
		t.Fatalf("got %s", s)
	}
	if d, ok := rc.next().(*http2.DataFrame); !ok || len(d.Data()) != 7 {
		t.Fatalf("DATA %v", d)
	}
	if tr, ok := rc.next().(*http2.MetaHeadersFrame); !ok || !tr.StreamEnded() || tr.PseudoValue("status") != "" {
		t.Fatalf("trailers %v", tr)
	}
	l := <-wl
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, ids := range l.writes {
		for _, id := range ids {
			if id == 1 {
				n++
				break
			}
		}
	}
	if n != 1 {
		t.Errorf("stream 1's frames left in %d writes, want 1: %v", n, l.writes)
	}
	rc.c.Close()
}

// TestReaderAndWriterWaitApart: while one goroutine of the handler waits
// for request body and another for the client's window, a WINDOW_UPDATE
// wakes the writer (a single shared wake-up could go to the reader, which
// waits on, and the response stalls).
func TestReaderAndWriterWaitApart(t *testing.T) {
	addr := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		first, read := make(chan struct{}), make(chan struct{})
		go func() {
			var b [1]byte
			r.Body.Read(b[:]) // the client's first byte
			close(first)
			io.ReadAll(r.Body) // waits for the rest: queued first for a wake-up
			close(read)
		}()
		<-first
		runtime.Gosched() // let the reader reach its wait (a hint; the test holds either way after the fix)
		io.WriteString(w, "ab")
		w.(http.Flusher).Flush() // one byte goes, the other waits for the window
		<-read
	})})
	rc := newRawClient(t, addr, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1})
	for id := uint32(1); id < 40; id += 2 {
		rc.headers(id, false, ":method", "POST")
		rc.fr.WriteData(id, false, []byte("x"))
		if s := status(rc.next()); s != "200" {
			t.Fatalf("stream %d: %s", id, s)
		}
		if d, ok := rc.next().(*http2.DataFrame); !ok || string(d.Data()) != "a" {
			t.Fatalf("stream %d: first DATA %v", id, d)
		}
		rc.fr.WriteWindowUpdate(id, 1)
		rc.c.SetReadDeadline(time.Now().Add(3 * time.Second))
		f, err := rc.fr.ReadFrame()
		for err == nil {
			if _, ok := f.(*http2.DataFrame); ok {
				break
			}
			f, err = rc.fr.ReadFrame()
		}
		if d, ok := f.(*http2.DataFrame); err != nil || !ok || string(d.Data()) != "b" {
			t.Fatalf("stream %d: after WINDOW_UPDATE: %v %v (the writer was not woken)", id, f, err)
		}
		rc.c.SetReadDeadline(time.Now().Add(10 * time.Second))
		rc.fr.WriteData(id, true, nil)
		for {
			if f := rc.next(); f.Header().StreamID == id && f.Header().Flags.Has(http2.FlagDataEndStream) {
				break
			}
		}
	}
}

// TestAckFlushStopsTimer: a PING's acknowledgement that leaves with a
// response's flush stops writeControl's timer (it used to fire anyway, a
// goroutine per gRPC call). The delay is an hour: the timer cannot be
// what flushes here.
func TestAckFlushStopsTimer(t *testing.T) {
	old := flushDelay.Swap(int64(time.Hour))
	defer flushDelay.Store(old)
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })}
	addr := serve(t, s)
	rc := newRawClient(t, addr)
	armed := func() (armed, found bool) {
		s.mu.Lock()
		defer s.mu.Unlock()
		for sc := range s.conns {
			sc.wmu.Lock()
			armed, found = sc.flushArmed, true
			sc.wmu.Unlock()
		}
		return armed, found
	}
	rc.fr.WritePing(false, [8]byte{7})
	testenv.WaitFor(t, 10*time.Second, "the acknowledgement waiting for a flush", func() bool { a, _ := armed(); return a })
	rc.headers(1, true)
	var acked, ended bool
	for !acked || !ended {
		switch f := rc.next().(type) {
		case *http2.PingFrame:
			acked = acked || f.IsAck() && f.Data == [8]byte{7}
		case *http2.DataFrame:
			ended = ended || f.StreamEnded()
		}
	}
	testenv.WaitFor(t, 10*time.Second, "the timer stopped", func() bool { a, found := armed(); return found && !a })
}

// TestLoneStreamFlushesAtOnce: a response flushes without yielding to
// other goroutines first while its stream is the connection's only open
// one, and yields while another is open (its handler may add frames).
func TestLoneStreamFlushesAtOnce(t *testing.T) {
	release := make(chan struct{})
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/wait" {
			<-release
		}
		io.WriteString(w, "ok")
	})}
	addr := serve(t, s)
	defer close(release)
	rc := newRawClient(t, addr)
	yields := func() int {
		s.mu.Lock()
		defer s.mu.Unlock()
		for sc := range s.conns {
			sc.wmu.Lock()
			defer sc.wmu.Unlock()
			return sc.yields
		}
		return -1
	}
	answered := func(id uint32) {
		t.Helper()
		for {
			if f := rc.next(); f.Header().StreamID == id && f.Header().Flags.Has(http2.FlagDataEndStream) {
				return
			}
		}
	}
	rc.headers(1, true)
	answered(1)
	if n := yields(); n != 0 {
		t.Fatalf("%d yields for a lone stream's response, want 0", n)
	}
	rc.headers(3, true, ":path", "/wait")
	rc.headers(5, true)
	answered(5)
	if n := yields(); n != 1 {
		t.Fatalf("%d yields for a response with another stream open, want 1", n)
	}
}

// TestHeaderValuesApart: a request's header values share one array, but
// an append to one key's values leaves the next key's alone, and a
// repeated key keeps all its values in order.
func TestHeaderValuesApart(t *testing.T) {
	got := make(chan string, 1)
	addr := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Header["X-A"] = append(r.Header["X-A"], "appended")
		got <- fmt.Sprint(r.Header["X-A"], r.Header["X-B"], r.Header["X-C"])
	})})
	rc := newRawClient(t, addr)
	rc.headers(1, true, "x-a", "1", "x-b", "2", "x-c", "3", "x-b", "4")
	select {
	case s := <-got:
		if s != "[1 appended] [2 4] [3]" {
			t.Fatalf("header values %s, want [1 appended] [2 4] [3]", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no request")
	}
}
