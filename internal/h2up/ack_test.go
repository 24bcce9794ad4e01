package h2up_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/fogmesh/fogmesh/internal/h2up"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// writeLogConn records the frames of each write to the connection.
type writeLogConn struct {
	net.Conn
	mu     sync.Mutex
	writes [][]string // frame types (with END_STREAM, ACK) per write
}

func (c *writeLogConn) Write(p []byte) (int, error) {
	b := bytes.TrimPrefix(p, []byte(http2.ClientPreface))
	fr := http2.NewFramer(nil, bytes.NewReader(b))
	var kinds []string
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			break
		}
		k := f.Header().Type.String()
		if f.Header().Flags.Has(http2.FlagPingAck) && f.Header().Type == http2.FramePing {
			k += "+ACK"
		}
		if f.Header().Flags.Has(http2.FlagDataEndStream) && f.Header().Type == http2.FrameData {
			k += "+END"
		}
		kinds = append(kinds, k)
	}
	c.mu.Lock()
	c.writes = append(c.writes, kinds)
	c.mu.Unlock()
	return c.Conn.Write(p)
}

func (c *writeLogConn) log() [][]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([][]string(nil), c.writes...)
}

// TestPingAckRidesTheNextRequest: a server's PING (grpc-go pings after
// each request it reads) is acknowledged in the write of the next
// request, not in a system call of its own (h2up used to flush it at
// once). The flush delay is raised so that a busy machine cannot make
// the timer flush first; that the timer flushes an acknowledgement no
// request follows is TestResetNoErrorAfterResponseKeepsBody's.
func TestPingAckRidesTheNextRequest(t *testing.T) {
	defer h2up.SetControlFlushDelay(time.Hour)()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acks := make(chan struct{}, 4)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		fr, err := serverFramer(c)
		if err != nil {
			return
		}
		fr.WriteSettings()
		var b bytesBuffer
		hpack.NewEncoder(&b).WriteField(hpack.HeaderField{Name: ":status", Value: "204"})
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			switch f := f.(type) {
			case *http2.MetaHeadersFrame:
				fr.WritePing(false, [8]byte{byte(f.StreamID)}) // before the answer: taken before the next request
				fr.WriteHeaders(http2.HeadersFrameParam{StreamID: f.StreamID, BlockFragment: b, EndHeaders: true, EndStream: true})
			case *http2.PingFrame:
				if f.IsAck() {
					acks <- struct{}{}
				}
			}
		}
	}()
	var lc *writeLogConn
	pool := h2up.New(h2up.Config{Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", ln.Addr().String())
		if err != nil {
			return nil, err
		}
		lc = &writeLogConn{Conn: c}
		return lc, nil
	}})
	defer pool.Close()
	for i := range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://x/", nil)
		resp, err := pool.RoundTrip(req)
		cancel()
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		resp.Body.Close()
	}
	// The first two PINGs were answered with the second and third
	// requests.
	for i := range 2 {
		select {
		case <-acks:
		case <-time.After(10 * time.Second):
			t.Fatalf("PING %d not acknowledged", i+1)
		}
	}
	var alone, riding int
	for _, w := range lc.log() {
		s := strings.Join(w, ",")
		if s == "PING+ACK" {
			alone++
		}
		if strings.Contains(s, "PING+ACK") && strings.Contains(s, "HEADERS") {
			riding++
		}
	}
	if alone != 0 || riding != 2 {
		t.Fatalf("writes %v: %d acknowledgements alone, %d with a request's HEADERS; want 0 and 2", fmt.Sprint(lc.log()), alone, riding)
	}
}

// endReader returns its bytes and io.EOF in one read, as h2srv's request
// body does once the client's END_STREAM came with its last DATA.
type endReader struct{ b []byte }

func (r *endReader) Read(p []byte) (int, error) {
	n := copy(p, r.b)
	r.b = r.b[n:]
	if len(r.b) == 0 {
		return n, io.EOF
	}
	return n, nil
}

// TestLastDataCarriesTheEnd: a request body that reads its last bytes
// with io.EOF is sent as one DATA frame with END_STREAM, not as DATA and
// an empty DATA with END_STREAM (a write of its own).
func TestLastDataCarriesTheEnd(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		fr, err := serverFramer(c)
		if err != nil {
			return
		}
		fr.WriteSettings()
		var b bytesBuffer
		hpack.NewEncoder(&b).WriteField(hpack.HeaderField{Name: ":status", Value: "204"})
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			if f.Header().Flags.Has(http2.FlagDataEndStream) && f.Header().Type == http2.FrameData {
				fr.WriteHeaders(http2.HeadersFrameParam{StreamID: f.Header().StreamID, BlockFragment: b, EndHeaders: true, EndStream: true})
			}
		}
	}()
	var lc *writeLogConn
	pool := h2up.New(h2up.Config{Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", ln.Addr().String())
		if err != nil {
			return nil, err
		}
		lc = &writeLogConn{Conn: c}
		return lc, nil
	}})
	defer pool.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", "http://x/", &endReader{[]byte("hello")})
	resp, err := pool.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	var frames []string // the request's frames (acknowledgements may ride along)
	for _, w := range lc.log() {
		for _, k := range w {
			if strings.HasPrefix(k, "HEADERS") || strings.HasPrefix(k, "DATA") {
				frames = append(frames, k)
			}
		}
	}
	if strings.Join(frames, ",") != "HEADERS,DATA+END" {
		t.Fatalf("request frames %q, want HEADERS and one DATA with END_STREAM", frames)
	}
}

// TestAckFlushStopsTimer: an acknowledgement that leaves with a request's
// flush stops writeControlLocked's timer (it used to fire anyway). The delay is
// an hour: the timer cannot be what flushes here.
func TestAckFlushStopsTimer(t *testing.T) {
	defer h2up.SetControlFlushDelay(time.Hour)()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		fr, err := serverFramer(c)
		if err != nil {
			return
		}
		fr.WriteSettings()
		var b bytesBuffer
		hpack.NewEncoder(&b).WriteField(hpack.HeaderField{Name: ":status", Value: "204"})
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			if f, ok := f.(*http2.MetaHeadersFrame); ok {
				fr.WriteHeaders(http2.HeadersFrameParam{StreamID: f.StreamID, BlockFragment: b, EndHeaders: true, EndStream: true})
				if f.StreamID == 3 {
					// After the second answer: acknowledged with the third
					// request. Not after the first: the acknowledgement of
					// the server's SETTINGS may still wait then (the first
					// request's write can go before the read loop reads
					// them), and the test would take its timer for the
					// PING's.
					fr.WritePing(false, [8]byte{7})
				}
			}
		}
	}()
	var lc *writeLogConn
	pool := h2up.New(h2up.Config{Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", ln.Addr().String())
		if err != nil {
			return nil, err
		}
		lc = &writeLogConn{Conn: c}
		return lc, nil
	}})
	defer pool.Close()
	roundTrip := func() {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://x/", nil)
		resp, err := pool.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	roundTrip()
	roundTrip() // takes the SETTINGS acknowledgement along; the server's PING follows its answer
	testenv.WaitFor(t, 10*time.Second, "the acknowledgement waiting for a flush", func() bool {
		armed, _ := h2up.ControlFlushArmed(pool)
		return armed
	})
	roundTrip()
	// The request's write returned before RoundTrip did.
	if armed, found := h2up.ControlFlushArmed(pool); !found || armed {
		t.Fatalf("timer armed %v (connection found %v) after the acknowledgement left; writes %v", armed, found, lc.log())
	}
}

// TestResponseHeaderValuesApart: a response's header (and trailer) values
// share one array, but an append to one key's values leaves the next
// key's alone, and a repeated key keeps all its values in order.
func TestResponseHeaderValuesApart(t *testing.T) {
	addr := serveRawOnce(t, func(c net.Conn, fr *http2.Framer) {
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			if f, ok := f.(*http2.MetaHeadersFrame); ok {
				fr.WriteHeaders(http2.HeadersFrameParam{StreamID: f.StreamID, EndHeaders: true,
					BlockFragment: headerBlock(":status", "200", "x-a", "1", "x-b", "2", "x-c", "3", "x-b", "4")})
				fr.WriteHeaders(http2.HeadersFrameParam{StreamID: f.StreamID, EndHeaders: true, EndStream: true,
					BlockFragment: headerBlock("t-a", "1", "t-b", "2")})
			}
		}
	})
	pool := h2up.New(h2up.Config{Dial: dialTo(addr)})
	defer pool.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://x/", nil)
	resp, err := pool.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	h := resp.Header
	h["X-A"] = append(h["X-A"], "appended")
	if s := fmt.Sprint(h["X-A"], h["X-B"], h["X-C"]); s != "[1 appended] [2 4] [3]" {
		t.Fatalf("header values %s, want [1 appended] [2 4] [3]", s)
	}
	if _, err := io.ReadAll(resp.Body); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	tr := resp.Trailer
	tr["T-A"] = append(tr["T-A"], "appended")
	if s := fmt.Sprint(tr["T-A"], tr["T-B"]); s != "[1 appended] [2]" {
		t.Fatalf("trailer values %s, want [1 appended] [2]", s)
	}
}
