package h2up_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/fogmesh/fogmesh/internal/h2up"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// TestReadLoopOwesNoWaitWhileWriterStalls: while a request body's writer
// is blocked on an endpoint that stopped reading (holding the write
// lock), the read loop must not wait for that lock for anything it
// writes itself, not only SETTINGS and PING acknowledgements
// (queueControl): the RST_STREAM it sends for a stream the endpoint broke
// the rules on, the WINDOW_UPDATE returning the bytes of a stream already
// reset, and the GOAWAY it sends when the endpoint broke the connection's
// rules. Each used to block the read loop (c.write) until the stall
// watchdog closed the connection (a minute here): the response the
// endpoint sent next never reached the caller, or the connection error
// never failed the stalled request.
func TestReadLoopOwesNoWaitWhileWriterStalls(t *testing.T) {
	for _, tc := range []struct {
		name    string
		addr    string
		trigger func(fr *http2.Framer, other uint32) error
		connErr bool // the trigger is a connection error: the upload fails
	}{
		{name: "rst_stream", addr: "127.92.31.1:0", trigger: func(fr *http2.Framer, other uint32) error {
			// DATA before the response's HEADERS: the read loop resets the
			// stream (RST_STREAM of its own).
			return fr.WriteData(other, false, []byte("x"))
		}},
		{name: "window_update", addr: "127.92.31.2:0", trigger: func(fr *http2.Framer, other uint32) error {
			// The endpoint resets the other stream, then sends it more than
			// connUpdateAt (1 MiB) of DATA: the read loop returns it to the
			// connection's window (WINDOW_UPDATE of its own).
			if err := fr.WriteRSTStream(other, http2.ErrCodeCancel); err != nil {
				return err
			}
			chunk := make([]byte, 16384)
			for range 65 {
				if err := fr.WriteData(other, false, chunk); err != nil {
					return err
				}
			}
			return nil
		}},
		{name: "goaway", addr: "127.92.31.3:0", connErr: true, trigger: func(fr *http2.Framer, other uint32) error {
			// HEADERS on a stream the server may not open: PROTOCOL_ERROR,
			// the read loop's GOAWAY on its way out.
			return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 2, BlockFragment: headerBlock(":status", "200"), EndHeaders: true})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			readLoopOwesNoWait(t, tc.addr, tc.trigger, tc.connErr)
		})
	}
}

func readLoopOwesNoWait(t *testing.T, addr string, trigger func(*http2.Framer, uint32) error, connErr bool) {
	const stall = time.Minute // the watchdog is not what ends the wait
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	dialed := make(chan *stallConn, 2)
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

	firstSeen := make(chan uint32, 1)  // the GET's stream
	uploadSeen := make(chan uint32, 1) // the upload's stream: the endpoint reads no more
	stalled := make(chan struct{})
	quit := make(chan struct{})
	srvErr := make(chan error, 1)
	srvDone := make(chan struct{})
	go func() {
		defer close(srvDone)
		c, err := ln.Accept()
		ln.Close()
		if err != nil {
			srvErr <- err
			return
		}
		defer c.Close()
		fr, err := serverFramer(c)
		if err != nil {
			srvErr <- err
			return
		}
		fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1<<31 - 1})
		fr.WriteWindowUpdate(0, 1<<31-1-65535)
		h := firstHeaders(fr)
		if h == nil {
			srvErr <- io.ErrUnexpectedEOF
			return
		}
		other := h.StreamID
		firstSeen <- other
		if h = firstHeaders(fr); h == nil {
			srvErr <- io.ErrUnexpectedEOF
			return
		}
		upload := h.StreamID
		uploadSeen <- upload
		select {
		case <-stalled:
		case <-quit:
			return
		}
		if err := trigger(fr, other); err != nil {
			srvErr <- err
			return
		}
		if !connErr {
			if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: upload, BlockFragment: headerBlock(":status", "200"), EndHeaders: true, EndStream: true}); err != nil {
				srvErr <- err
				return
			}
		}
		<-quit
	}()
	defer func() { close(quit); <-srvDone }()

	getReq, _ := http.NewRequest("GET", "http://x/first", nil)
	gotGet := make(chan error, 1)
	go func() {
		resp, err := pool.RoundTrip(getReq)
		if err == nil {
			resp.Body.Close()
		}
		gotGet <- err
	}()
	select {
	case <-firstSeen:
	case err := <-srvErr:
		t.Fatalf("endpoint: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the GET's HEADERS did not arrive")
	}
	req, _ := http.NewRequest("POST", "http://x/upload", io.NopCloser(&zeros{}))
	type result struct {
		resp *http.Response
		err  error
	}
	got := make(chan result, 1)
	go func() {
		resp, err := pool.RoundTrip(req) // its body is left to pool.Close
		got <- result{resp, err}
	}()
	select {
	case <-uploadSeen:
	case err := <-srvErr:
		t.Fatalf("endpoint: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the upload's HEADERS did not arrive")
	}
	sc := <-dialed
	if len(dialed) > 0 {
		t.Fatal("the upload went on a second connection")
	}
	testenv.WaitFor(t, 10*time.Second, "the request body's write to block", func() bool {
		return sc.blockedFor() > 100*time.Millisecond
	})
	close(stalled)

	const within = 10 * time.Second // far within the watchdog's minute
	select {
	case r := <-got:
		switch {
		case connErr && r.err == nil:
			t.Fatal("the upload succeeded on a connection the endpoint broke")
		case !connErr && r.err != nil:
			t.Fatalf("RoundTrip: %v", r.err)
		case !connErr && r.resp.StatusCode != 200:
			t.Fatalf("status %d", r.resp.StatusCode)
		}
	case err := <-srvErr:
		t.Fatalf("endpoint: %v", err)
	case <-time.After(within):
		t.Fatalf("the upload did not end %v after the endpoint's frames (its writer blocked for %v): the read loop waits for the write lock",
			within, sc.blockedFor())
	}
}
