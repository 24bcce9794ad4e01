package httpproxy

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestPoolFusedExchange: a bodyless request written inside the read of its
// response (upWire) gets its answer whether the endpoint answers at once
// (many rounds: an answer between the write and the wait must not be
// lost), within fuseRecheck (the wait wakes) or after it (the read of
// fuseRecheck's deadline, then the ordinary wait); and a busy connection's
// exchange has no read that finds the socket empty but a spurious wake's.
func TestPoolFusedExchange(t *testing.T) {
	for _, tc := range []struct {
		name   string
		rounds int
		delay  time.Duration
	}{
		{"instant", 2000, 0},
		{"within recheck", 10, fuseRecheck / 4},
		{"after recheck", 5, fuseRecheck + fuseRecheck/2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := startUpstream(t, func(c net.Conn, req *http.Request) bool {
				if tc.delay > 0 {
					time.Sleep(tc.delay) // the endpoint's own pause
				}
				return ok(c, req)
			})
			p := u.pool(PoolConfig{})
			defer p.Close(true)
			get(t, p, "GET", "") // the connection, dialed
			var reads, empty atomic.Int64
			SetReadHookForTest(func(e bool) {
				reads.Add(1)
				if e {
					empty.Add(1)
				}
			})
			defer SetReadHookForTest(nil)
			for i := range tc.rounds {
				if code, body := get(t, p, "GET", ""); code != 200 || body != "ok" {
					t.Fatalf("round %d: %d %q", i, code, body)
				}
			}
			if n := u.accepted.Load(); n != 1 {
				t.Fatalf("%d connections; want 1", n)
			}
			if tc.delay == 0 && empty.Load() > int64(tc.rounds)/4 {
				t.Fatalf("%d of %d reads found the socket empty in %d rounds", empty.Load(), reads.Load(), tc.rounds)
			}
		})
	}
}

// TestPoolCancelDuringFusedWait: a request cancelled at any moment of its
// response's wait, fuseRecheck's read deadline included (set, fired,
// cleared), ends at once: no deadline the fused read sets clears the
// poison of a cancellation (a request timeout's, or CancelHeadWait's) for
// an endpoint that never answers.
func TestPoolCancelDuringFusedWait(t *testing.T) {
	release := make(chan struct{})
	u := startUpstream(t, func(c net.Conn, req *http.Request) bool {
		<-release // never answers
		return false
	})
	defer close(release)
	p := u.pool(PoolConfig{})
	defer p.Close(true)
	const n = 40
	errs := make(chan error, 2*n)
	for i := range n {
		after := time.Duration(i) * 2 * fuseRecheck / n
		go func() { // a request timeout's cancellation
			ctx, cancel := context.WithCancel(context.Background())
			req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc/", nil)
			time.AfterFunc(after, cancel)
			_, err := p.RoundTrip(req)
			errs <- err
		}()
		go func() { // the fast path's client gone while the head is awaited
			conn, cancel := context.WithCancel(context.Background())
			ctx := WithStreamCancel(conn)
			req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc/", nil)
			time.AfterFunc(after, func() { cancel(); CancelHeadWait(ctx) })
			_, err := p.RoundTrip(req)
			errs <- err
		}()
	}
	timeout := time.After(10 * time.Second)
	for i := range 2 * n {
		select {
		case err := <-errs:
			if err == nil {
				t.Fatal("a request to an endpoint that never answers succeeded")
			}
		case <-timeout:
			t.Fatalf("%d of %d cancelled requests still wait", 2*n-i, 2*n)
		}
	}
}

// TestPoolFusedDeadlineGoneBeforeOtherReads: fuseRecheck's read deadline
// bounds only the fused read of a response's first bytes. A body that
// comes after it, a connection left idle past it and then checked before
// reuse (alive: the check of a request with a body), and the ordinary
// exchange of a connection idle past fuseIdleMax all read as if it was
// never set: each gets its answer on the one connection.
func TestPoolFusedDeadlineGoneBeforeOtherReads(t *testing.T) {
	slowBody := make(chan struct{}, 1)
	u := startUpstream(t, func(c net.Conn, req *http.Request) bool {
		select {
		case <-slowBody: // the head now, the body after fuseRecheck
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
			time.Sleep(fuseRecheck + fuseRecheck/2)
			io.WriteString(c, "ok")
			return true
		default:
			return ok(c, req)
		}
	})
	p := u.pool(PoolConfig{})
	defer p.Close(true)
	pastRecheck := func() {
		t.Helper()
		from := MonoTime()
		waitFor(t, "fuseRecheck to pass", func() bool { return MonoTime().Sub(from) > 3*fuseRecheck }) // sendHeld's deadline: up to 2 fuseRecheck away
	}
	get(t, p, "GET", "") // the connection, dialed: the next GET fuses
	slowBody <- struct{}{}
	if code, body := get(t, p, "GET", ""); code != 200 || body != "ok" {
		t.Fatalf("body after fuseRecheck: %d %q", code, body)
	}
	get(t, p, "GET", "") // fused: its deadline is left for what follows
	pastRecheck()
	if code, body := get(t, p, "POST", "x"); code != 200 || body != "ok" {
		t.Fatalf("checked before reuse: %d %q", code, body)
	}
	get(t, p, "GET", "")
	pastRecheck()
	if code, body := get(t, p, "GET", ""); code != 200 || body != "ok" {
		t.Fatalf("ordinary exchange: %d %q", code, body)
	}
	if n := u.accepted.Load(); n != 1 {
		t.Fatalf("%d connections; want 1", n)
	}
}

// TestPoolShortBodyAfterFusedResponseFailsPromptly: a request whose body
// ends short of its Content-Length fails before any of it is sent; the
// look for an early answer that follows (earlyResponse) waits at most
// earlyResponseWait, also on a connection whose last response a fused read
// brought (its deadline left set, rechecking): clearing that deadline must
// not clear earlyResponse's own, or the read waits for an answer that never
// comes (the endpoint got nothing) until the request is cancelled.
func TestPoolShortBodyAfterFusedResponseFailsPromptly(t *testing.T) {
	u := startUpstream(t, ok)
	p := u.pool(PoolConfig{})
	defer p.Close(true)
	for i := range 5 { // each on a new connection: its first GET fuses
		get(t, p, "GET", "")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		req, err := http.NewRequestWithContext(ctx, "POST", "http://svc/x", io.NopCloser(strings.NewReader("x")))
		if err != nil {
			t.Fatal(err)
		}
		req.ContentLength = 5
		start := time.Now()
		resp, err := p.RoundTrip(req)
		took := time.Since(start)
		cancel()
		if err == nil {
			resp.Body.Close()
			t.Fatalf("%d: a body short of its Content-Length: %d", i, resp.StatusCode)
		}
		if took > 10*earlyResponseWait {
			t.Fatalf("%d: failed after %v (%v); want within earlyResponseWait, %v", i, took, err, earlyResponseWait)
		}
	}
}

// TestPoolFusedDeadlineMovedRarely: a busy connection's fused reads do
// not each set their read deadline (a runtime timer's move per request):
// one left at least fuseRecheck away is kept (sendHeld), so requests in
// a row set it about once per fuseRecheck. Before, every request set it.
func TestPoolFusedDeadlineMovedRarely(t *testing.T) {
	u := startUpstream(t, ok)
	p := u.pool(PoolConfig{})
	defer p.Close(true)
	get(t, p, "GET", "") // the connection, dialed
	const rounds = 100
	sets := 0
	var last time.Time
	start := MonoTime()
	for i := range rounds {
		if code, body := get(t, p, "GET", ""); code != 200 || body != "ok" {
			t.Fatalf("round %d: %d %q", i, code, body)
		}
		p.mu.Lock()
		if len(p.idle) != 1 || p.idle[0].wire == nil {
			p.mu.Unlock()
			t.Fatalf("round %d: %d idle connections, want 1 with a wire", i, len(p.idle))
		}
		until := p.idle[0].wire.until
		p.mu.Unlock()
		if !until.Equal(last) {
			sets++
			last = until
		}
	}
	took := MonoTime().Sub(start)
	if sets == 0 { // the wire never set a fused read's deadline: nothing below would be tested
		t.Fatalf("none of %d back-to-back requests over %v was fused", rounds, took)
	}
	// At most one set per fuseRecheck of the run's time (and the first),
	// on a machine however slow; a run within fuseRecheck sets it once.
	if most := 2 + int(took/fuseRecheck); sets > most || sets > rounds/2 {
		t.Fatalf("%d deadline sets in %d fused requests over %v; want at most %d", sets, rounds, took, min(most, rounds/2))
	}
	t.Logf("%d deadline sets in %d fused requests over %v", sets, rounds, took)
}
