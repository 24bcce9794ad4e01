package agent

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// TestH2CancellationBothWays: the HTTP/2 path's one request context
// (h2Call) still carries a cancellation both ways: a client's RST_STREAM
// cancels the endpoint's stream, and an endpoint's reset mid-body resets
// the client's stream (not a clean end).
func TestH2CancellationBothWays(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	upstreamGone := make(chan struct{}, 1)
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("first"))
		http.NewResponseController(w).Flush()
		switch r.URL.Path {
		case "/hang":
			select {
			case <-r.Context().Done():
				upstreamGone <- struct{}{}
			case <-time.After(30 * time.Second):
			}
		case "/abort":
			panic(http.ErrAbortHandler) // RST_STREAM to the agent
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	f := agentInFront(t, inFront{node: "c", octet: 83, svc: "cancelh2", vipPort: 19793, port: ln.Addr().(*net.TCPAddr).Port,
		proto: "http2", noRequest: true})
	c, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := (&http2.Transport{AllowHTTP: true}).NewClientConn(c)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()

	// Client reset → the endpoint's request context ends.
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+f.addr+"/hang", nil)
	resp, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != "first" {
		t.Fatalf("first bytes %q, %v", buf, err)
	}
	cancel() // RST_STREAM(CANCEL)
	select {
	case <-upstreamGone:
	case <-time.After(20 * time.Second):
		t.Fatal("the endpoint's stream lived on after the client reset its own")
	}
	resp.Body.Close()

	// Endpoint reset mid-body → the client's stream fails.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel2()
	req, _ = http.NewRequestWithContext(ctx2, "GET", "http://"+f.addr+"/abort", nil)
	resp, err = cc.RoundTrip(req)
	if err != nil {
		return // reset before the header: failed too
	}
	_, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	var se http2.StreamError
	if !errors.As(err, &se) {
		t.Fatalf("body of a response the endpoint reset: err %v, want a stream reset", err)
	}
}
