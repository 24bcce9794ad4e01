package h2up_test

import (
	"context"
	"errors"
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
)

// readyBody is a request body that says whether a Read would wait
// (ReadReady), as h2srv's does: h2up sends what it has at once on the
// caller's goroutine, with the HEADERS.
type readyBody struct {
	mu    sync.Mutex
	cond  sync.Cond
	buf   []byte
	ended bool
}

func newReadyBody(b string, ended bool) *readyBody {
	r := &readyBody{buf: []byte(b), ended: ended}
	r.cond.L = &r.mu
	return r
}

func (r *readyBody) ReadReady() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.buf) > 0 || r.ended
}

func (r *readyBody) Read(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for len(r.buf) == 0 && !r.ended {
		r.cond.Wait()
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	if len(r.buf) == 0 && r.ended {
		return n, io.EOF
	}
	return n, nil
}

func (r *readyBody) add(b string, end bool) {
	r.mu.Lock()
	r.buf = append(r.buf, b...)
	r.ended = r.ended || end
	r.cond.Broadcast()
	r.mu.Unlock()
}

func (r *readyBody) Close() error { return nil }

// serverEvent is what the echo server saw of a stream.
type serverEvent struct {
	body  string
	reset http2.ErrCode
}

// serveEcho answers each request's HEADERS at once with a 200 (the body
// may still be open; for the path /stall nothing follows), returns the flow-control credit of every DATA frame
// it reads, and when the request ends echoes its body with END_STREAM.
// Each stream's end (or RST_STREAM) goes to events. The initial stream
// window is win.
func serveEcho(ln net.Listener, win uint32, events chan<- serverEvent) {
	c, err := ln.Accept()
	if err != nil {
		return
	}
	defer c.Close()
	fr, err := serverFramer(c)
	if err != nil {
		return
	}
	fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: win})
	var ok bytesBuffer
	hpack.NewEncoder(&ok).WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
	bodies := map[uint32][]byte{}
	stalled := map[uint32]bool{} // path /stall: no answer after the headers
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return
		}
		id := f.Header().StreamID
		end := false
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: ok, EndHeaders: true})
			end = f.StreamEnded()
			stalled[id] = f.PseudoValue("path") == "/stall"
		case *http2.DataFrame:
			bodies[id] = append(bodies[id], f.Data()...)
			if n := uint32(len(f.Data())); n > 0 {
				fr.WriteWindowUpdate(0, n)
				fr.WriteWindowUpdate(id, n)
			}
			end = f.StreamEnded()
		case *http2.RSTStreamFrame:
			events <- serverEvent{body: string(bodies[id]), reset: f.ErrCode}
		}
		if end && !stalled[id] {
			fr.WriteData(id, true, bodies[id])
			events <- serverEvent{body: string(bodies[id])}
		}
	}
}

func readyPool(t *testing.T, win uint32) (*h2up.Pool, <-chan serverEvent) {
	pool, events, _ := readyPoolLogged(t, win)
	return pool, events
}

func readyPoolLogged(t *testing.T, win uint32) (*h2up.Pool, <-chan serverEvent, func() *writeLogConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	events := make(chan serverEvent, 8)
	go serveEcho(ln, win, events)
	var mu sync.Mutex
	var lc *writeLogConn
	pool := h2up.New(h2up.Config{Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", ln.Addr().String())
		if err != nil {
			return nil, err
		}
		mu.Lock()
		defer mu.Unlock()
		lc = &writeLogConn{Conn: c}
		return lc, nil
	}})
	t.Cleanup(pool.Close)
	return pool, events, func() *writeLogConn { mu.Lock(); defer mu.Unlock(); return lc }
}

// TestReadyBodyOneWrite: a unary call's body, all there when the request
// is sent, leaves with its HEADERS in one write, as one DATA frame with
// END_STREAM.
func TestReadyBodyOneWrite(t *testing.T) {
	pool, events, lc := readyPoolLogged(t, 65535)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", "http://x/", newReadyBody("hello", true))
	resp, err := pool.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(resp.Body)
	resp.Body.Close()
	nextEvent(t, events)
	var w []string // the request's frames in the write with its HEADERS (acknowledgements may ride along)
	for _, kinds := range lc().log() {
		if strings.Contains(strings.Join(kinds, ","), "HEADERS") {
			w = w[:0]
			for _, k := range kinds {
				if strings.HasPrefix(k, "HEADERS") || strings.HasPrefix(k, "DATA") {
					w = append(w, k)
				}
			}
		}
	}
	if strings.Join(w, ",") != "HEADERS,DATA+END" {
		t.Fatalf("the request's write %q, want HEADERS and DATA with END_STREAM", w)
	}
}

func nextEvent(t *testing.T, events <-chan serverEvent) serverEvent {
	t.Helper()
	select {
	case ev := <-events:
		return ev
	case <-time.After(10 * time.Second):
		t.Fatal("the server saw no end of the stream")
		return serverEvent{}
	}
}

// TestReadyBodyLargerThanWindow: a body that is all there (ready, ended)
// but larger than the server's stream window goes out in part with the
// HEADERS and the rest as the server returns credit.
func TestReadyBodyLargerThanWindow(t *testing.T) {
	pool, events := readyPool(t, 10)
	want := strings.Repeat("0123456789", 100)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", "http://x/", newReadyBody(want, true))
	resp, err := pool.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || string(got) != want {
		t.Fatalf("echo %d bytes, %v; want %d bytes", len(got), err, len(want))
	}
	if ev := nextEvent(t, events); ev.body != want || ev.reset != 0 {
		t.Fatalf("server got %d bytes, reset %v", len(ev.body), ev.reset)
	}
}

// TestReadyBodyStreams: a body whose first bytes are ready but whose end
// is not (a streaming call) sends those at once and the rest as it
// comes, after the response has been returned (full duplex).
func TestReadyBodyStreams(t *testing.T) {
	pool, events := readyPool(t, 65535)
	body := newReadyBody("first,", false)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", "http://x/", body)
	resp, err := pool.RoundTrip(req) // answered on the HEADERS: returns with the body open
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body.add("second,", false)
	body.add("last", true)
	got, err := io.ReadAll(resp.Body)
	if err != nil || string(got) != "first,second,last" {
		t.Fatalf("echo %q, %v", got, err)
	}
	if ev := nextEvent(t, events); ev.body != "first,second,last" || ev.reset != 0 {
		t.Fatalf("server got %q, reset %v", ev.body, ev.reset)
	}
}

// TestReadyBodyCancelledMidBody: a call cancelled after its ready first
// bytes went out, with the rest of its body still to come, resets the
// stream (RST_STREAM CANCEL) and its body's reads end.
func TestReadyBodyCancelledMidBody(t *testing.T) {
	pool, events := readyPool(t, 65535)
	body := newReadyBody("first,", false)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", "http://x/", body)
	resp, err := pool.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	cancel()
	if _, err := io.ReadAll(resp.Body); !errors.Is(err, context.Canceled) {
		t.Fatalf("response body read %v after the cancel, want context.Canceled", err)
	}
	if ev := nextEvent(t, events); ev.reset != http2.ErrCodeCancel || ev.body != "first," {
		t.Fatalf("server got %q, reset %v; want the first bytes and CANCEL", ev.body, ev.reset)
	}
	body.add("", true) // the body writer's goroutine, blocked in Read, ends
}

// TestRefusedOpenKeepsConnection: a request that reserved a slot on a
// connection but could not open its stream there (a GOAWAY came in
// between, or its caller gave up) fails alone: the streams open on the
// connection go on. It closed the connection, and the in-flight stream
// with it (a gRPC stream failed with EOF while its server drained).
func TestRefusedOpenKeepsConnection(t *testing.T) {
	for _, goaway := range []bool{false, true} {
		t.Run(fmt.Sprintf("goaway=%v", goaway), func(t *testing.T) {
			pool, events := readyPool(t, 65535)
			body := newReadyBody("first,", false)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "POST", "http://x/", body)
			resp, err := pool.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()

			octx, ocancel := context.WithCancel(ctx)
			if !goaway {
				ocancel()
			}
			defer ocancel()
			other, _ := http.NewRequestWithContext(octx, "GET", "http://x/", nil)
			if _, err := h2up.RoundTripReserved(pool, other, goaway); err == nil {
				t.Fatal("a request sent where it could not be opened succeeded")
			}

			body.add("last", true)
			got, err := io.ReadAll(resp.Body)
			if err != nil || string(got) != "first,last" {
				t.Fatalf("the stream in flight read %q, %v; want the echo", got, err)
			}
			if ev := nextEvent(t, events); ev.body != "first,last" || ev.reset != 0 {
				t.Fatalf("server got %q, reset %v", ev.body, ev.reset)
			}
		})
	}
}
