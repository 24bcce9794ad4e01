package httpproxy

import (
	"net"
	"net/http"
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
