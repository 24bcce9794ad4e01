package relay

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/identity"
)

// logRecords is a slog handler keeping each record as "message k=v ...".
type logRecords struct {
	mu   sync.Mutex
	recs []string
}

func (h *logRecords) Enabled(context.Context, slog.Level) bool { return true }
func (h *logRecords) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *logRecords) WithGroup(string) slog.Handler            { return h }
func (h *logRecords) Handle(_ context.Context, r slog.Record) error {
	line := r.Message
	r.Attrs(func(a slog.Attr) bool { line += " " + a.Key + "=" + a.Value.String(); return true })
	h.mu.Lock()
	h.recs = append(h.recs, line)
	h.mu.Unlock()
	return nil
}

func (h *logRecords) matching(subs ...string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
next:
	for _, r := range h.recs {
		for _, s := range subs {
			if !strings.Contains(r, s) {
				continue next
			}
		}
		out = append(out, r)
	}
	return out
}

// TestRelayLogsRefusals: a node asking the relay for a peer it may not
// reach (the policy denies the pair, or the peer is in another trust
// domain), by introduction or by a relayed session, is refused, counted
// and logged with the node's identity; the same reason again within
// refusalLogEvery is counted, not logged again.
func TestRelayLogsRefusals(t *testing.T) {
	logs := &logRecords{}
	var denied string
	var mu sync.Mutex
	start := time.Now()
	f := newFixture(t, func(c *Config) {
		c.Logger = slog.New(logs)
		c.Now = func() time.Time { return start } // a still clock: the rate limit cannot lapse
		c.Policy = func(from, to spiffeid.ID) error {
			mu.Lock()
			defer mu.Unlock()
			if to.String() == denied {
				return errors.New("not that one")
			}
			return nil
		}
	})
	x := f.node("site-a", "x")
	z := f.node("site-c", "z")
	mu.Lock()
	denied = z.id
	mu.Unlock()
	ctx := ctx20(t)

	_, err := x.c.introduce(ctx, &Introduce{Nonce: newID(), Time: start.UnixMilli(), Peer: z.id})
	var re *Error
	if !errors.As(err, &re) || re.Reason != ReasonDenied {
		t.Fatalf("introduction to a denied peer: %v", err)
	}
	if _, err := x.c.DialPeer(ctx, z.id); !errors.As(err, &re) || re.Reason != ReasonDenied {
		t.Fatalf("relayed session to a denied peer: %v", err)
	}
	if got := f.metric(refused(ReasonDenied)); got != 2 {
		t.Errorf("denied counted %v, want 2", got)
	}
	if got := logs.matching("relay: refused", "reason="+ReasonDenied, "node="+x.id, z.id); len(got) != 1 {
		t.Errorf("log lines of the denied requests: %q, want one", got)
	}
	other := "spiffe://other.example/site/b/node/y"
	if _, err := x.c.DialPeer(ctx, other); !errors.As(err, &re) || re.Reason != ReasonOtherDomain {
		t.Fatalf("relayed session to another trust domain: %v", err)
	}
	if got := logs.matching("relay: refused", "reason="+ReasonOtherDomain, "node="+x.id); len(got) != 1 {
		t.Errorf("log lines of the other-domain request: %q, want one", got)
	}
}

// TestRelayIntroductionsBoundedPerNode: one node asking for introductions
// in a loop fills at most its share of the relay's replay store
// (maxNoncesPerNode) and is then refused with introduction_limit; another
// node is still introduced. Without the share, one node would fill the
// whole store and stop introductions (punching) relay-wide.
func TestRelayIntroductionsBoundedPerNode(t *testing.T) {
	var clock atomic.Int64 // the relay's clock: still unless the test moves it
	clock.Store(time.Now().UnixNano())
	f := newFixture(t, func(c *Config) { c.Now = func() time.Time { return time.Unix(0, clock.Load()) } })
	now := time.Unix(0, clock.Load())
	x := f.node("site-a", "x")
	y := f.node("site-b", "y")
	z := f.node("site-c", "z")
	ctx := ctx20(t)
	// Fill the store directly up to x's share (as many introductions
	// would), then ask once more over the wire.
	f.srv.mu.Lock()
	for range maxNoncesPerNode {
		f.srv.rememberNonceLocked(x.c.Hello().Node, newID(), now)
	}
	f.srv.mu.Unlock()
	_, err := x.c.introduce(ctx, &Introduce{Nonce: newID(), Time: now.UnixMilli(), Peer: y.id})
	var re *Error
	if !errors.As(err, &re) || re.Reason != ReasonIntroductionLimit {
		t.Fatalf("x over its share: %v, want %s", err, ReasonIntroductionLimit)
	}
	if got := f.metric(refused(ReasonIntroductionLimit)); got != 1 {
		t.Errorf("introduction_limit counted %v", got)
	}
	// z is still introduced.
	if _, err := z.c.introduce(ctx, &Introduce{Nonce: newID(), Time: now.UnixMilli(), Peer: y.id}); err != nil {
		t.Fatalf("z's introduction: %v", err)
	}
	// Once x's nonces expire, x is introduced again.
	now = now.Add(2*DefaultReplayWindow + time.Second)
	clock.Store(now.UnixNano())
	if _, err := x.c.introduce(ctx, &Introduce{Nonce: newID(), Time: now.UnixMilli(), Peer: y.id}); err != nil {
		t.Fatalf("x after its nonces expired: %v", err)
	}
}

// TestRelayLogsUnauthenticatedRefusals: connections refused before they
// are authenticated (plaintext, no certificate) are counted and logged with
// their remote address, once per reason within refusalLogEvery.
func TestRelayLogsUnauthenticatedRefusals(t *testing.T) {
	logs := &logRecords{}
	start := time.Now()
	f := newFixture(t, func(c *Config) {
		c.Logger = slog.New(logs)
		c.Now = func() time.Time { return start } // a still clock: the rate limit cannot lapse
	})
	for i := range 2 {
		plain, err := net.Dial("tcp", f.addr)
		if err != nil {
			t.Fatal(err)
		}
		plain.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
		plain.SetReadDeadline(time.Now().Add(20 * time.Second))
		plain.Read(make([]byte, 1))
		plain.Close()
		waitFor(t, "not_tls counted", func() bool { return f.metric(refused(identity.ReasonNotTLS)) == float64(i+1) })
	}
	if got := logs.matching("relay: refused", "reason="+identity.ReasonNotTLS, "remote=127.0.0.1:"); len(got) != 1 {
		t.Errorf("log lines of the plaintext connections: %q, want one", got)
	}
}
