package agent

import (
	"context"
	"net/http"
	"testing"
	"time"
)

// TestH2AsyncResetBeforeHeaders: a request forwarded asynchronously (a
// second stream open beside it) whose client resets its stream before the
// endpoint answered has the endpoint's stream reset too: h2up's watch of
// the request's end is the h2srv stream's own (h2CallCtx.WatchEnd), not
// context.AfterFunc, and must still fire.
func TestH2AsyncResetBeforeHeaders(t *testing.T) {
	asyncOn(t)
	arrived := make(chan string, 4)
	gone := make(chan string, 4)
	release := make(chan struct{})
	port := startH2CEndpoint(t, func(w http.ResponseWriter, r *http.Request) {
		arrived <- r.URL.Path
		select {
		case <-r.Context().Done():
			gone <- r.URL.Path
		case <-release:
		case <-time.After(30 * time.Second):
		}
	})
	f := agentInFront(t, inFront{node: "ew", octet: 107, svc: "endwatch", vipPort: 19947, port: port,
		proto: "http2", noRequest: true})
	cc := h2ClientTo(t, f.addr)
	wait := func(ch chan string, want string) {
		t.Helper()
		select {
		case got := <-ch:
			if got != want {
				t.Fatalf("got %s, want %s", got, want)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("no %s", want)
		}
	}
	holdDone := make(chan struct{})
	go func() { // the stream beside: the next one is forwarded asynchronously
		defer close(holdDone)
		req, _ := http.NewRequest("GET", f.base+"/hold", nil)
		if resp, err := cc.RoundTrip(req); err == nil {
			resp.Body.Close()
		}
	}()
	wait(arrived, "/hold")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		req, _ := http.NewRequestWithContext(ctx, "GET", f.base+"/hang", nil)
		if resp, err := cc.RoundTrip(req); err == nil {
			resp.Body.Close()
		}
	}()
	wait(arrived, "/hang")
	cancel() // RST_STREAM(CANCEL) before any answer
	wait(gone, "/hang")
	close(release)
	<-holdDone
}
