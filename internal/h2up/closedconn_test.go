package h2up_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/h2up"
)

type closedDialErr struct{ err error }

func (e *closedDialErr) Error() string { return "connect: " + e.err.Error() }
func (e *closedDialErr) Unwrap() error { return e.err }

// TestEndpointClosingAtOnceIsADialError: an endpoint that accepts and closes
// every connection at once. Nothing of any request reaches it. RoundTrip
// retries errConnGone (the connection closed between the slot's
// reservation and the HEADERS' write) three times and then returned it
// bare: neither the DialError wrapping (nothing sent: the agent fails over
// for free) nor an I/O error (the agent's upstreamFailure). The agent then
// takes it for an error of the request itself: no failover, no outlier
// ejection (l7retry.go: case !upstreamFailure(err): return nil, err).
func TestEndpointClosingAtOnceIsADialError(t *testing.T) {
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
			c.Close()
		}
	}()
	pool := h2up.New(h2up.Config{Dial: dialTo(ln.Addr().String()), DialError: func(err error) error { return &closedDialErr{err} }})
	defer pool.Close()
	counts := map[string]int{}
	for range 200 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://x/", nil)
		resp, err := pool.RoundTrip(req)
		cancel()
		if err == nil {
			resp.Body.Close()
			counts["ok"]++
			continue
		}
		var de *closedDialErr
		var ne net.Error
		switch {
		case errors.As(err, &de):
			counts["dial error"]++
		case errors.Is(err, io.EOF), errors.As(err, &ne):
			counts["eof/net"]++
		default:
			counts[err.Error()]++
		}
	}
	t.Logf("%v", counts)
	if n := counts[errConnGoneText]; n > 0 {
		t.Errorf("%d of 200 requests failed with the bare %q (neither a dial error nor an I/O error)", n, errConnGoneText)
	}
}

const errConnGoneText = "h2up: connection no longer takes streams"
