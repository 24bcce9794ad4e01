package h2up_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/fogmesh/fogmesh/internal/h2up"
)

// stallConn records whether a Write is in progress and since when, and
// how long the longest Write that returned took.
type stallConn struct {
	net.Conn
	mu      sync.Mutex
	inWrite bool
	since   time.Time
	longest time.Duration
}

func (c *stallConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.inWrite, c.since = true, time.Now()
	c.mu.Unlock()
	n, err := c.Conn.Write(p)
	c.mu.Lock()
	c.inWrite = false
	c.longest = max(c.longest, time.Since(c.since))
	c.mu.Unlock()
	return n, err
}

func (c *stallConn) longestWrite() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.longest
}

func (c *stallConn) blockedFor() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.inWrite {
		return 0
	}
	return time.Since(c.since)
}

// zeros is an endless request body (never ReadReady).
type zeros struct{ n atomic.Int64 }

func (z *zeros) Read(p []byte) (int, error) {
	clear(p)
	z.n.Add(int64(len(p)))
	return len(p), nil
}

// TestStalledEndpointLeavesOtherRequestsTheirDeadlines: an endpoint that grants large
// windows and then stops reading its socket. One request's body fills the
// socket buffers, its writer blocks in a flush holding the connection's
// write lock; every other request on the connection then blocks on that
// lock (roundTrip's writeFlush, or reset's RST_STREAM write on
// cancellation) and ignores its context: RoundTrip never returns.
func TestStalledEndpointLeavesOtherRequestsTheirDeadlines(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	srvConn := make(chan net.Conn, 1)
	go serveStalling(ln, srvConn)
	var sc *stallConn
	scSet := make(chan struct{})
	pool := h2up.New(h2up.Config{Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", ln.Addr().String())
		if err != nil {
			return nil, err
		}
		sc = &stallConn{Conn: c}
		close(scSet)
		return sc, nil
	}})
	defer pool.Close()
	var server net.Conn
	defer func() {
		if server != nil {
			server.Close() // unblocks everything
		}
	}()

	// Request A: an endless body; its writer ends up blocked in a write.
	ctxA, cancelA := context.WithCancel(context.Background())
	defer cancelA()
	body := &zeros{}
	reqA, _ := http.NewRequestWithContext(ctxA, "POST", "http://x/upload", io.NopCloser(body))
	doneA := make(chan error, 1)
	go func() {
		resp, err := pool.RoundTrip(reqA)
		if err == nil {
			resp.Body.Close()
		}
		doneA <- err
	}()
	<-scSet
	select {
	case server = <-srvConn:
	case <-time.After(10 * time.Second):
		t.Fatal("no connection")
	}
	deadline := time.Now().Add(20 * time.Second)
	for sc.blockedFor() < 200*time.Millisecond {
		if time.Now().After(deadline) {
			t.Fatalf("the client's write never blocked (%d body bytes read)", body.n.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("client write blocked; %d body bytes read", body.n.Load())

	// Request B: a GET with a 300 ms deadline on the same connection.
	ctxB, cancelB := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancelB()
	reqB, _ := http.NewRequestWithContext(ctxB, "GET", "http://x/quick", nil)
	doneB := make(chan error, 1)
	go func() {
		resp, err := pool.RoundTrip(reqB)
		if err == nil {
			resp.Body.Close()
		}
		doneB <- err
	}()
	// And A is cancelled by its client.
	cancelA()
	var failed []string
	select {
	case err := <-doneB:
		t.Logf("B: %v", err)
	case <-time.After(5 * time.Second):
		failed = append(failed, "request B still in RoundTrip 4.7 s after its 300 ms deadline")
	}
	select {
	case err := <-doneA:
		t.Logf("A: %v", err)
	case <-time.After(2 * time.Second):
		failed = append(failed, "request A still in RoundTrip 2 s after its cancellation")
	}
	for _, f := range failed {
		t.Error(f)
	}
}

// TestUndeclaredTrailerThroughProxy: an endpoint declares
// "Trailer: grpc-status, grpc-message" (as grpc-go's ServeHTTP server
// declares its trailers) and sends grpc-status and a trailer it did not
// declare (trailer metadata). net/http's transport merges the trailers
// into resp.Trailer (declared keys stay), so ReverseProxy (and forwardH2,
// which copies its logic) sees more keys than announced and passes the
// undeclared one with http.TrailerPrefix. h2up replaced resp.Trailer with
// the received ones: same count as announced, the undeclared trailer is
// set as a plain header key after WriteHeader, and the server drops it.
// h2up now merges as net/http does.
func TestUndeclaredTrailerThroughProxy(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fr, err := serverFramer(c)
				if err != nil {
					return
				}
				fr.WriteSettings()
				enc := func(fields ...string) []byte {
					var b bytesBuffer
					e := hpack.NewEncoder(&b)
					for i := 0; i < len(fields); i += 2 {
						e.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
					}
					return b
				}
				for {
					f, err := fr.ReadFrame()
					if err != nil {
						return
					}
					switch f := f.(type) {
					case *http2.SettingsFrame:
						if !f.IsAck() {
							fr.WriteSettingsAck()
						}
					case *http2.MetaHeadersFrame:
						id := f.StreamID
						fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, EndHeaders: true,
							BlockFragment: enc(":status", "200", "content-type", "text/plain", "trailer", "grpc-status, grpc-message")})
						fr.WriteData(id, false, []byte("hello"))
						fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, EndHeaders: true, EndStream: true,
							BlockFragment: enc("grpc-status", "0", "x-custom", "kept")})
					}
				}
			}()
		}
	}()
	pool := h2up.New(h2up.Config{Dial: dialTo(ln.Addr().String())})
	defer pool.Close()

	// h2up directly: net/http keeps declared trailer keys in resp.Trailer.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://x/", nil)
	resp, err := pool.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	t.Logf("h2up resp.Trailer after EOF: %v", resp.Trailer)

	// Through ReverseProxy, as the agent's l7 (and forwardH2) do.
	target, _ := url.Parse("http://" + ln.Addr().String())
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.Transport = pool
	front := httptest.NewServer(rp)
	defer front.Close()
	req, _ = http.NewRequestWithContext(ctx, "GET", front.URL+"/", nil)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "hello" || resp.Trailer.Get("Grpc-Status") != "0" {
		t.Fatalf("body %q trailer %v", b, resp.Trailer)
	}
	if resp.Trailer.Get("X-Custom") != "kept" {
		t.Errorf("trailer x-custom lost through the proxy: client got trailers %v", resp.Trailer)
	}

}
