package agent

import (
	"context"
	"net/http"
	"testing"
)

// BenchmarkAcquireFor: a request of the net/http server (no connection
// place) taking and giving back its client's place, with a context shaped
// as that server's (its values under the handler's h1Call). ProtoMajor 1
// skips the search for an HTTP/2 connection's place; ProtoMajor 2 makes it
// (and finds none), as every request did before: the difference is the
// walk the HTTP/1.x requests no longer pay.
func BenchmarkAcquireFor(b *testing.B) {
	type k struct{ n int }
	ctx, cancel := context.WithCancel(context.WithValue(context.WithValue(context.Background(), k{1}, 1), k{2}, 2)) // the server's, the connection's
	defer cancel()
	ctx = withConnIdentity(context.WithValue(ctx, targetKey{}, listenTarget{svc: "demo/x"}), "")
	ctx, cancel2 := context.WithCancel(ctx) // the request's
	defer cancel2()
	c := &h1Call{}
	c.ctx.Context, c.ctx.up = ctx, &c.up
	for _, major := range []int{1, 2} {
		req := (&http.Request{Method: "GET", ProtoMajor: major, RemoteAddr: "127.75.0.5:1234", Header: http.Header{}}).WithContext(&c.ctx)
		name := "http1"
		if major == 2 {
			name = "searched"
		}
		b.Run(name, func(b *testing.B) {
			var l clientLimiter
			for b.Loop() {
				var h reqHold
				if !l.acquireFor(req, nil, 256, &h) {
					b.Fatal("refused")
				}
				h.release()
			}
		})
	}
}
