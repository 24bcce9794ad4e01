package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestH2AsyncThroughOneAgent: many streams at once on one client
// connection through one agent (a port declared http2), so that their
// responses are completed asynchronously (l7h2async.go): short answers
// (finished on the upstream's read loop), answers with trailers, bodies
// past the read loop's limit and past the client's window, streamed
// answers, an upstream reset, and clients that give up mid-stream; each
// stream gets its own answer, whole, and the agent holds nothing after.
func TestH2AsyncThroughOneAgent(t *testing.T) {
	asyncOn(t)
	big := strings.Repeat("b", 200<<10)
	port := startH2CEndpoint(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/small":
			fmt.Fprintf(w, "small %s", r.URL.Query().Get("i"))
		case "/trailers":
			w.Header().Set("Trailer", "X-Sum")
			io.WriteString(w, "with trailers")
			w.Header().Set("X-Sum", r.URL.Query().Get("i"))
		case "/big":
			io.WriteString(w, big)
		case "/stream":
			for i := range 3 {
				fmt.Fprintf(w, "part%d ", i)
				w.(http.Flusher).Flush()
				time.Sleep(5 * time.Millisecond)
			}
		case "/reset":
			panic(http.ErrAbortHandler)
		case "/hang":
			<-r.Context().Done()
		}
	})
	f := agentInFront(t, inFront{node: "as1", octet: 142, svc: "assvc", vipPort: 19950, port: port,
		proto: "http2", noRequest: true})
	cc := h2ClientTo(t, f.addr)
	before := asyncInline.Load()
	get := func(ctx context.Context, path string) (string, http.Header, error) {
		req, _ := http.NewRequestWithContext(ctx, "GET", f.base+path, nil)
		resp, err := cc.RoundTrip(req)
		if err != nil {
			return "", nil, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err == nil && resp.StatusCode != 200 {
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		return string(b), resp.Trailer, err
	}
	var wg sync.WaitGroup
	errs := make(chan error, 1000)
	for round := range 20 {
		for i := range 10 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				n := fmt.Sprint(round*10 + i)
				var want, got string
				var err error
				switch i {
				case 0:
					want = "with trailers"
					var tr http.Header
					got, tr, err = get(context.Background(), "/trailers?i="+n)
					if err == nil && tr.Get("X-Sum") != n {
						err = fmt.Errorf("trailer X-Sum %q, want %q", tr.Get("X-Sum"), n)
					}
				case 1:
					want = big
					got, _, err = get(context.Background(), "/big")
				case 2:
					want = "part0 part1 part2 "
					got, _, err = get(context.Background(), "/stream")
				case 3:
					if _, _, err := get(context.Background(), "/reset"); err == nil {
						errs <- errors.New("/reset: no error")
					}
					return
				case 4:
					ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
					defer cancel()
					if _, _, err := get(ctx, "/hang"); err == nil {
						errs <- errors.New("/hang: no error")
					}
					return
				default:
					want = "small " + n
					got, _, err = get(context.Background(), "/small?i="+n)
				}
				if err != nil || got != want {
					errs <- fmt.Errorf("request %s (%d): %v, %d bytes, want %d", n, i, err, len(got), len(want))
				}
			}()
		}
		wg.Wait()
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if asyncInline.Load() == before {
		t.Error("no response was finished on the upstream's read loop")
	}
	// Nothing held: the agent's L7 requests in flight drain to zero.
	deadline := time.Now().Add(10 * time.Second)
	for f.agent.l7Inflight.Load() != 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := f.agent.l7Inflight.Load(); n != 0 {
		t.Errorf("%d requests still held", n)
	}
}
