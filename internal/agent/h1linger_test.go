package agent

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/httpproxy"
)

// TestDrainOrLingerOnlyWithBytesLeft: a connection that closes after its
// response (the client sent "Connection: close") is closed lingering
// (a CloseWrite, then reading until the client closes or 500 ms) only if
// its request body has bytes nobody read, as net/http's server. Before,
// every such request with a body lingered, even one read to its end.
func TestDrainOrLingerOnlyWithBytesLeft(t *testing.T) {
	noDeadline := func(time.Time) error { return nil }
	for _, tc := range []struct {
		name   string
		cl     int64 // -1: chunked
		read   int   // bytes read before the response; -1: to the end
		linger bool
	}{
		{"length, read to its end", 5, -1, false},
		{"length, read to its length without EOF", 5, 5, false},
		{"length, partly read", 5, 2, true},
		{"length, unread", 5, 0, true},
		{"chunked, read to its end", -1, -1, false},
		{"chunked, all bytes but not its end", -1, 5, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tb := httpproxy.NewTimedBody(io.NopCloser(strings.NewReader("hello")), noDeadline)
			in := &http.Request{ContentLength: tc.cl}
			if tc.read < 0 {
				if _, err := io.ReadAll(tb); err != nil {
					t.Fatal(err)
				}
			} else if tc.read > 0 {
				if _, err := io.ReadFull(tb, make([]byte, tc.read)); err != nil {
					t.Fatal(err)
				}
			}
			cs := &h1ClientConn{}
			if keep := cs.drainOrLinger(in, tb, false); keep {
				t.Fatal("a connection closing was kept")
			}
			if cs.linger != tc.linger {
				t.Fatalf("linger %v, want %v", cs.linger, tc.linger)
			}
		})
	}
	// A lingering close armed before (more body left than a drain takes)
	// stays armed.
	cs := &h1ClientConn{linger: true}
	tb := httpproxy.NewTimedBody(io.NopCloser(strings.NewReader("")), noDeadline)
	io.ReadAll(tb)
	cs.drainOrLinger(&http.Request{ContentLength: 0}, tb, false)
	if !cs.linger {
		t.Fatal("an armed lingering close was disarmed")
	}
}
