package h2up_test

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/fogmesh/fogmesh/internal/h2up"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// answerThenFlood answers c's first request (200, no body), waits for
// flood, then stops reading and sends 9000 PINGs: an endpoint that no
// longer reads while it makes its client write acknowledgements (fewer
// than the 10000 waiting that cut it, ENHANCE_YOUR_CALM, but far more
// than the socket buffers take). Then WINDOW_UPDATEs, which the client
// answers with nothing, until its writes fail. It sends the time they
// failed to ended.
func answerThenFlood(c net.Conn, flood <-chan struct{}, ended chan<- time.Time) {
	defer func() { ended <- time.Now() }()
	fr, err := serverFramer(c)
	if err != nil {
		return
	}
	fr.WriteSettings()
	h := firstHeaders(fr)
	if h == nil {
		return
	}
	var hb bytes.Buffer
	hpack.NewEncoder(&hb).WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: h.StreamID, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true})
	<-flood
	var pings, updates bytes.Buffer
	pf := http2.NewFramer(&pings, nil)
	for i := 0; i < 9000; i++ {
		pf.WritePing(false, [8]byte{byte(i)})
	}
	uf := http2.NewFramer(&updates, nil)
	for i := 0; i < 1024; i++ {
		uf.WriteWindowUpdate(0, 1)
	}
	if _, err := c.Write(pings.Bytes()); err != nil {
		return
	}
	for {
		if _, err := c.Write(updates.Bytes()); err != nil {
			return
		}
	}
}

// TestIdleConnectionStalledControlWriteCloses: a connection without
// streams still writes, its acknowledgements of the endpoint's PINGs and
// SETTINGS among them. The stall watchdog ticked only while the
// connection carried streams: an endpoint that stopped reading and kept
// pinging blocked the acknowledgements' write, and with it the read loop,
// until IdleTimeout (90 s by default) closed the connection. The
// watchdog now starts on an idle connection's write: the connection is
// closed within about StallTimeout of the write's block.
func TestIdleConnectionStalledControlWriteCloses(t *testing.T) {
	const stall = 300 * time.Millisecond
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	flood, ended := make(chan struct{}), make(chan time.Time, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.(*net.TCPConn).SetReadBuffer(4 << 10)
		answerThenFlood(c, flood, ended)
	}()
	dialed := make(chan *stallConn, 1)
	pool := h2up.New(h2up.Config{StallTimeout: stall, IdleTimeout: time.Minute, Dial: func(ctx context.Context) (net.Conn, error) {
		c, err := dialTo(ln.Addr().String())(ctx)
		if err != nil {
			return nil, err
		}
		c.(*net.TCPConn).SetWriteBuffer(4 << 10)
		sc := &stallConn{Conn: c}
		dialed <- sc
		return sc, nil
	}})
	defer pool.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://x/", nil)
	resp, err := pool.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	sc := <-dialed
	// Idle, and the watchdog stopped: nothing but the connection's own
	// writes can start it now.
	testenv.WaitFor(t, 10*time.Second, "the idle connection's watchdog to stop", func() bool { return h2up.WatchdogStopped(pool) })
	start := time.Now()
	close(flood)
	select {
	case end := <-ended:
		t.Logf("the endpoint's writes failed %v into the flood; longest write %v", end.Sub(start), sc.longestWrite())
	case <-time.After(15 * time.Second):
		t.Fatalf("the connection is still open 15 s into the flood (StallTimeout %v), its write blocked for %v: not closed by the watchdog",
			stall, sc.blockedFor())
	}
	// The endpoint sees its writes fail as soon as the watchdog closes the
	// connection; the write it unblocked records how long it waited only
	// once it has returned.
	testenv.WaitFor(t, 5*time.Second, "the blocked write to return", func() bool { return sc.blockedFor() == 0 })
	if d := sc.longestWrite(); d < stall {
		t.Errorf("the longest write waited %v, less than StallTimeout %v: the connection ended for another reason", d, stall)
	}
	testenv.WaitFor(t, 10*time.Second, "the closed connection to leave the pool", func() bool { return h2up.Conns(pool) == 0 })
}
