package h2up_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/fogmesh/fogmesh/internal/h2up"
)

// heldStream is a request a holdingServer read and has not answered.
type heldStream struct {
	conn int // the server's connection, 0 for its first
	id   uint32
	srv  *holdingConn
}

// answer ends the stream with a 200 and no body.
func (h heldStream) answer() {
	h.srv.mu.Lock()
	defer h.srv.mu.Unlock()
	h.srv.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: h.id, EndHeaders: true, EndStream: true,
		BlockFragment: headerBlock(":status", "200")})
}

type holdingConn struct {
	c  net.Conn
	mu sync.Mutex // guards writes on fr
	fr *http2.Framer
}

// goAway sends GOAWAY leaving the streams already open be.
func (h *holdingConn) goAway(last uint32) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.fr.WriteGoAway(last, http2.ErrCodeNo, nil)
}

// holdingServer accepts HTTP/2 connections on a loopback port and sends
// every request's HEADERS to held, answering only when the test says so.
func holdingServer(t *testing.T) (addr string, held <-chan heldStream) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan heldStream, 64)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for n := 0; ; n++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				fr, err := serverFramer(c)
				if err != nil {
					return
				}
				hc := &holdingConn{c: c, fr: fr}
				hc.mu.Lock()
				fr.WriteSettings()
				hc.mu.Unlock()
				for {
					f, err := fr.ReadFrame()
					if err != nil {
						return
					}
					switch f := f.(type) {
					case *http2.MetaHeadersFrame:
						ch <- heldStream{conn: n, id: f.StreamID, srv: hc}
					case *http2.SettingsFrame:
						if !f.IsAck() {
							hc.mu.Lock()
							fr.WriteSettingsAck()
							hc.mu.Unlock()
						}
					}
				}
			}()
		}
	}()
	return ln.Addr().String(), ch
}

// sendHeld sends a request through pool on a goroutine of its own and
// returns the stream the server read and the request's result.
func sendHeld(t *testing.T, pool *h2up.Pool, held <-chan heldStream) (heldStream, <-chan error) {
	t.Helper()
	res := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://x/", nil)
		resp, err := pool.RoundTrip(req)
		if err == nil {
			resp.Body.Close()
		}
		res <- err
	}()
	select {
	case h := <-held:
		return h, res
	case err := <-res:
		t.Fatalf("request ended before the server read it: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the server read no request")
	}
	panic("unreachable")
}

// waitLoads waits until the pool's connections carry want streams each.
func waitLoads(t *testing.T, pool *h2up.Pool, want ...int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := h2up.Loads(pool)
		if slices.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("connections carry %v streams, want %v", got, want)
		}
		time.Sleep(time.Millisecond)
	}
}

func wantDone(t *testing.T, res <-chan error) {
	t.Helper()
	select {
	case err := <-res:
		if err != nil {
			t.Fatalf("request: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("request not answered")
	}
}

// TestSpreadLeastLoaded: streams stay on one connection until it carries
// SpreadTarget; the next opens a second connection, and each request then
// goes on the connection with the fewest streams, up to Conns
// connections.
func TestSpreadLeastLoaded(t *testing.T) {
	addr, held := holdingServer(t)
	var dials atomic.Int64
	dial := dialTo(addr)
	pool := h2up.New(h2up.Config{Conns: 2, Dial: func(ctx context.Context) (net.Conn, error) {
		dials.Add(1)
		return dial(ctx)
	}})
	defer pool.Close()
	k := h2up.SpreadTarget()
	var results []<-chan error
	for i := range k {
		h, res := sendHeld(t, pool, held)
		if h.conn != 0 {
			t.Fatalf("request %d on connection %d, want 0 (below the target)", i, h.conn)
		}
		results = append(results, res)
	}
	// The next opens a connection, and the following go on it, the
	// least loaded, until it carries as many.
	var second []heldStream
	for range k {
		h, res := sendHeld(t, pool, held)
		if h.conn != 1 {
			t.Fatalf("request on connection %d, want the new, least loaded (1)", h.conn)
		}
		second, results = append(second, h), append(results, res)
	}
	// Two streams end on the second connection: it is the least loaded
	// (where the first with a free slot would be the first connection).
	second[0].answer()
	second[1].answer()
	wantDone(t, results[k])
	wantDone(t, results[k+1])
	waitLoads(t, pool, k, k-2)
	h, res := sendHeld(t, pool, held)
	if h.conn != 1 {
		t.Fatalf("request on connection %d, want the least loaded (1)", h.conn)
	}
	results = append(results, res)
	// Every connection at the target or above, and the cap reached: no
	// third connection.
	for range 2 * k {
		_, res := sendHeld(t, pool, held)
		results = append(results, res)
	}
	if n := dials.Load(); n != 2 {
		t.Fatalf("%d dials, want the cap (2)", n)
	}
	if n := h2up.Conns(pool); n != 2 {
		t.Fatalf("%d connections, want 2", n)
	}
}

// TestSpreadOneConnGoingAway: a GOAWAY on one of the pool's connections,
// and then that connection's close, fail no stream of the others; the
// streams the GOAWAY left open complete, and new requests go elsewhere.
func TestSpreadOneConnGoingAway(t *testing.T) {
	addr, held := holdingServer(t)
	pool := h2up.New(h2up.Config{Conns: 2, Dial: dialTo(addr)})
	defer pool.Close()
	k := h2up.SpreadTarget()
	var streams []heldStream
	var results []<-chan error
	for range k + 2 {
		h, res := sendHeld(t, pool, held)
		streams, results = append(streams, h), append(results, res)
	}
	if streams[0].conn != 0 || streams[k].conn != 1 {
		t.Fatalf("streams on connections %d and %d, want 0 and 1", streams[0].conn, streams[k].conn)
	}
	// Connection 0 goes away, keeping its open streams.
	streams[0].srv.goAway(1<<31 - 1)
	// New requests go to connection 1 (or a new one), never to 0; the
	// pool has seen the GOAWAY once a request lands elsewhere than 0, and
	// one sent on 0 after it would be refused and fail here.
	h, res := sendHeld(t, pool, held)
	if h.conn == 0 {
		// Sent before the pool read the GOAWAY: answer it and try again.
		h.answer()
		wantDone(t, res)
		h, res = sendHeld(t, pool, held)
		if h.conn == 0 {
			t.Fatal("a request went on the connection that had gone away")
		}
	}
	streams, results = append(streams, h), append(results, res)
	// Connection 0's streams complete; then it closes, the others carry on.
	for i, s := range streams {
		if s.conn == 0 {
			s.answer()
			wantDone(t, results[i])
		}
	}
	streams[0].srv.c.Close()
	for i, s := range streams {
		if s.conn != 0 {
			s.answer()
			wantDone(t, results[i])
		}
	}
}

// TestSpreadOneConnClosed: a connection of the pool that breaks fails
// its own streams only.
func TestSpreadOneConnClosed(t *testing.T) {
	addr, held := holdingServer(t)
	pool := h2up.New(h2up.Config{Conns: 2, Dial: dialTo(addr)})
	defer pool.Close()
	k := h2up.SpreadTarget()
	var streams []heldStream
	var results []<-chan error
	for range k + 2 {
		h, res := sendHeld(t, pool, held)
		streams, results = append(streams, h), append(results, res)
	}
	streams[0].srv.c.Close()
	for i, s := range streams {
		if s.conn != 0 {
			continue
		}
		select {
		case err := <-results[i]:
			if err == nil {
				t.Fatalf("stream %d of the closed connection succeeded", s.id)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("stream of the closed connection did not fail")
		}
	}
	for i, s := range streams {
		if s.conn != 0 {
			s.answer()
			wantDone(t, results[i])
		}
	}
}

// TestSpreadIdleClose: the connections opened for spreading close when
// idle, as the first does.
func TestSpreadIdleClose(t *testing.T) {
	addr, held := holdingServer(t)
	pool := h2up.New(h2up.Config{Conns: 3, IdleTimeout: 20 * time.Millisecond, Dial: dialTo(addr)})
	defer pool.Close()
	k := h2up.SpreadTarget()
	var streams []heldStream
	var results []<-chan error
	for range 2*k + 1 {
		h, res := sendHeld(t, pool, held)
		streams, results = append(streams, h), append(results, res)
	}
	if n := h2up.Conns(pool); n != 3 {
		t.Fatalf("%d connections, want 3", n)
	}
	for i, s := range streams {
		s.answer()
		wantDone(t, results[i])
	}
	deadline := time.Now().Add(10 * time.Second)
	for h2up.Conns(pool) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections left open after the idle timeout", h2up.Conns(pool))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestSpreadDialFails: a dial for spreading that fails leaves the
// request on the pool's connection, and the pool does not dial for
// spreading again at once.
func TestSpreadDialFails(t *testing.T) {
	defer h2up.SetSpreadRetryAfter(time.Hour)()
	addr, held := holdingServer(t)
	var dials atomic.Int64
	dial := dialTo(addr)
	pool := h2up.New(h2up.Config{Conns: 4, Dial: func(ctx context.Context) (net.Conn, error) {
		if dials.Add(1) > 1 {
			return nil, errors.New("refused")
		}
		return dial(ctx)
	}})
	defer pool.Close()
	k := h2up.SpreadTarget()
	var streams []heldStream
	var results []<-chan error
	for range k + 3 {
		h, res := sendHeld(t, pool, held)
		if h.conn != 0 {
			t.Fatalf("request on connection %d", h.conn)
		}
		streams, results = append(streams, h), append(results, res)
	}
	if n := dials.Load(); n != 2 {
		t.Fatalf("%d dials, want 2 (the first, one failed spread)", n)
	}
	for i, s := range streams {
		s.answer()
		wantDone(t, results[i])
	}
}
