package agent

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

type endedBody struct {
	io.ReadCloser
	ended bool
}

func (b *endedBody) UpstreamEnded() bool { return b.ended }

// TestLazyFlushSkipsOnlyEndedUpstreams: ReverseProxy's flush is skipped
// while the upstream response (through the agent's body wrappers) has
// ended, and passed on otherwise, or when no response is known.
func TestLazyFlushSkipsOnlyEndedUpstreams(t *testing.T) {
	for _, c := range []struct {
		name  string
		body  io.ReadCloser
		flush bool
	}{
		{"no response yet", nil, true},
		{"upstream streaming", &doneBody{ReadCloser: &endedBody{io.NopCloser(strings.NewReader("")), false}}, true},
		{"upstream ended", &releaseOnClose{ReadCloser: &grpcStatusBody{ReadCloser: &endedBody{io.NopCloser(strings.NewReader("")), true}}}, false},
		{"body without the method", io.NopCloser(strings.NewReader("")), true},
	} {
		rec := httptest.NewRecorder()
		up := &upstreamBody{}
		if c.body != nil {
			up.body.Store(&c.body)
		}
		w := &lazyFlushWriter{ResponseWriter: rec, up: up}
		if err := http.NewResponseController(w).Flush(); err != nil {
			t.Fatal(err)
		}
		if rec.Flushed != c.flush {
			t.Errorf("%s: flushed %v, want %v", c.name, rec.Flushed, c.flush)
		}
	}
}

// TestTrailerKey: the keys of unannounced trailers are ReverseProxy's
// (http.TrailerPrefix and the name), gRPC's as any other's.
func TestTrailerKey(t *testing.T) {
	for _, k := range []string{"Grpc-Status", "Grpc-Message", "Grpc-Status-Details-Bin", "X-Other"} {
		if got := trailerKey(k); got != http.TrailerPrefix+k {
			t.Errorf("trailerKey(%q) = %q", k, got)
		}
	}
}
