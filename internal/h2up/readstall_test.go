package h2up_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/fogmesh/fogmesh/internal/h2up"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// TestReadLoopReadsWhileWriterStalls: an endpoint that stopped reading
// while a large request body was being written (the connection's writer
// blocked in a write, holding the write lock) sends SETTINGS (a new
// header table size), a PING, the stream's response and then its
// RST_STREAM. The read loop used to wait for the write lock at the
// SETTINGS, to acknowledge it: the response and the reset reached the
// caller only once the stall watchdog closed the connection. The
// acknowledgements now wait for the lock instead, in order: once the
// endpoint reads again it finds both, and the next request's header
// block leads with the table size update (RFC 7541 §4.2).
func TestReadLoopReadsWhileWriterStalls(t *testing.T) {
	const stall = time.Minute // the watchdog is not what ends the wait
	ln, err := net.Listen("tcp", "127.84.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dialed := make(chan *stallConn, 1)
	pool := h2up.New(h2up.Config{StallTimeout: stall, Dial: func(ctx context.Context) (net.Conn, error) {
		c, err := dialTo(ln.Addr().String())(ctx)
		if err != nil {
			return nil, err
		}
		sc := &stallConn{Conn: c}
		dialed <- sc
		return sc, nil
	}})
	defer pool.Close()

	stalled := make(chan struct{}) // the client's writer is blocked: the endpoint answers
	read := make(chan struct{})    // the caller saw the reset: the endpoint reads again
	srvErr := make(chan error, 1)
	srvDone := make(chan struct{})
	quit := make(chan struct{}) // the test ended
	var srv net.Conn
	accepted := make(chan struct{})
	go func() {
		defer close(srvDone)
		c, err := ln.Accept()
		ln.Close()
		if err != nil {
			srvErr <- err
			return
		}
		srv = c
		close(accepted)
		srvErr <- serveStallThenAnswer(c, stalled, read, quit)
	}()
	defer func() {
		close(quit)
		select {
		case <-accepted:
			srv.Close()
		default:
			ln.Close()
		}
		<-srvDone
	}()

	body := &zeros{}
	req, _ := http.NewRequest("POST", "http://x/upload", io.NopCloser(body))
	type result struct {
		resp *http.Response
		err  error
	}
	got := make(chan result, 1)
	go func() {
		resp, err := pool.RoundTrip(req)
		got <- result{resp, err}
	}()
	var sc *stallConn
	select {
	case sc = <-dialed:
	case <-time.After(10 * time.Second):
		t.Fatal("no connection dialed")
	}
	// Blocked: one write in progress for 100 ms (a loopback write that
	// finds room returns within microseconds).
	testenv.WaitFor(t, 10*time.Second, "the request body's write to block", func() bool {
		return sc.blockedFor() > 100*time.Millisecond
	})
	t.Logf("the writer blocked after %d body bytes", body.n.Load())
	close(stalled)

	// Far within the watchdog's minute.
	const within = 10 * time.Second
	var r result
	select {
	case r = <-got:
	case err := <-srvErr:
		t.Fatalf("endpoint: %v", err)
	case <-time.After(within):
		t.Fatalf("no response %v after the endpoint sent it, the writer blocked for %v: the read loop waits for the write lock",
			within, sc.blockedFor())
	}
	if r.err != nil {
		t.Fatalf("RoundTrip: %v", r.err)
	}
	if r.resp.StatusCode != 200 {
		t.Fatalf("status %d", r.resp.StatusCode)
	}
	// The endpoint resets the stream after the response: the body's read
	// fails with it.
	readErr := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, r.resp.Body)
		readErr <- err
	}()
	select {
	case err := <-readErr:
		var se *h2up.StreamError
		if !errors.As(err, &se) || se.Code != http2.ErrCodeCancel {
			t.Fatalf("response body read: %v; want the endpoint's RST_STREAM(CANCEL)", err)
		}
	case <-time.After(within):
		t.Fatalf("the response body's read did not fail %v after the endpoint reset the stream", within)
	}
	r.resp.Body.Close()
	close(read)

	// The acknowledgements went out, and the next request's header block
	// leads with the size update (the endpoint checks both).
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	req2, _ := http.NewRequestWithContext(ctx, "GET", "http://x/next", nil)
	resp, err := pool.RoundTrip(req2)
	if err != nil {
		select {
		case serr := <-srvErr:
			t.Fatalf("second request: %v (endpoint: %v)", err, serr)
		default:
		}
		t.Fatalf("second request: %v", err)
	}
	resp.Body.Close()
	if err := <-srvErr; err != nil {
		t.Fatalf("endpoint: %v", err)
	}
	if n := h2up.Conns(pool); n != 1 {
		t.Errorf("%d connections; want the one", n)
	}
}

// serveStallThenAnswer grants the largest windows, reads up to the first
// request's HEADERS and stops reading. Once stalled is closed it sends
// SETTINGS_HEADER_TABLE_SIZE 0, a PING, the response headers and an
// RST_STREAM(CANCEL). Once read is closed it reads again: it wants the
// SETTINGS and PING acknowledgements, then a request whose header block
// begins with the table size update, which it answers. It returns when
// quit is closed.
func serveStallThenAnswer(c net.Conn, stalled, read, quit <-chan struct{}) error {
	wait := func(ch <-chan struct{}) error {
		select {
		case <-ch:
			return nil
		case <-quit:
			return errors.New("the test ended")
		}
	}
	br := bufio.NewReader(c)
	if _, err := io.ReadFull(br, make([]byte, len(http2.ClientPreface))); err != nil {
		return err
	}
	fr := http2.NewFramer(c, br)
	dec := testenv.NewStrictHPACK()
	fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1<<31 - 1})
	fr.WriteWindowUpdate(0, 1<<31-1-65535)
	var id uint32
	for id == 0 {
		f, err := fr.ReadFrame()
		if err != nil {
			return err
		}
		if h, ok := f.(*http2.HeadersFrame); ok {
			if _, err := dec.Decode(h.HeaderBlockFragment()); err != nil {
				return err
			}
			id = h.StreamID
		}
	}
	if err := wait(stalled); err != nil {
		return err
	}
	fr.WriteSettings(http2.Setting{ID: http2.SettingHeaderTableSize, Val: 0})
	fr.WritePing(false, [8]byte{1, 2, 3})
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: headerBlock(":status", "200"), EndHeaders: true})
	fr.WriteRSTStream(id, http2.ErrCodeCancel)
	if err := wait(read); err != nil {
		return err
	}
	var settingsAck, pingAck bool
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return fmt.Errorf("reading again (SETTINGS acknowledged %v, PING %v): %w", settingsAck, pingAck, err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if f.IsAck() {
				settingsAck = true
				dec.Acked(0)
			}
		case *http2.PingFrame:
			pingAck = pingAck || f.IsAck() && f.Data == [8]byte{1, 2, 3}
		case *http2.HeadersFrame:
			if !settingsAck || !pingAck {
				return fmt.Errorf("a request before the acknowledgements (SETTINGS %v, PING %v)", settingsAck, pingAck)
			}
			fields, err := dec.Decode(f.HeaderBlockFragment())
			if err != nil {
				return err
			}
			if !hasField(fields, ":path", "/next") {
				return fmt.Errorf("second request's fields %v", fields)
			}
			return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: f.StreamID, BlockFragment: headerBlock(":status", "200"), EndHeaders: true, EndStream: true})
		}
	}
}

func hasField(fields []hpack.HeaderField, name, value string) bool {
	for _, f := range fields {
		if f.Name == name && f.Value == value {
			return true
		}
	}
	return false
}
