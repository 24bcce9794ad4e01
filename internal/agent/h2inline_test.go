package agent

import (
	"context"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// TestH2ResetReachesUpstreamBeforeAnswer: a client's RST_STREAM reaches
// the endpoint while the agent's handler still waits for the endpoint's
// response header. The request is a lone GET (END_STREAM on HEADERS), so
// h2srv runs its handler on the connection's read loop (issue 14), where
// nobody reads the client until the read loop is taken over.
func TestH2ResetReachesUpstreamBeforeAnswer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{}, 1)
	upstreamGone := make(chan struct{}, 1)
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/silent" {
			return
		}
		started <- struct{}{}
		select { // no header written: the agent waits for it
		case <-r.Context().Done():
			upstreamGone <- struct{}{}
		case <-time.After(30 * time.Second):
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	f := agentInFront(t, inFront{node: "i", octet: 80, svc: "inlinerst", vipPort: 19800, port: ln.Addr().(*net.TCPAddr).Port,
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
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+f.addr+"/silent", nil)
	errc := make(chan error, 1)
	go func() {
		_, err := cc.RoundTrip(req)
		errc <- err
	}()
	select {
	case <-started:
	case <-time.After(20 * time.Second):
		t.Fatal("the request did not reach the endpoint")
	}
	cancel() // RST_STREAM(CANCEL)
	select {
	case <-upstreamGone:
	case <-time.After(20 * time.Second):
		t.Fatal("the endpoint's stream lived on after the client reset its own")
	}
	if err := <-errc; err == nil {
		t.Fatal("a reset request got a response")
	}
	// The connection serves the next request.
	req, _ = http.NewRequest("GET", "http://"+f.addr+"/", nil)
	resp, err := cc.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("next request: %s", resp.Status)
	}
}
