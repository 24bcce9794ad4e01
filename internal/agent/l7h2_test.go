package agent

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
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

// TestTaggedConnSyscallConn: the HTTP/2 server reads a client connection's
// descriptor itself (h2srv's read loop, issue 14) when taggedConn passes
// it on: a TCP connection read unbuffered; not one whose bytes go through
// taggedConn's buffer, nor one with bytes read already to replay (the
// HTTP/1.1 fast path's hand-off of "PRI * HTTP/2.0", auto detection's
// peek: prefixConn, not buffered), nor a connection without a descriptor.
func TestTaggedConnSyscallConn(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()
	for _, tc := range []struct {
		name string
		conn *taggedConn
		ok   bool
	}{
		{"tcp", &taggedConn{Conn: c}, true},
		{"tcp buffered", &taggedConn{Conn: c, buffered: true}, false},
		{"pipe", &taggedConn{Conn: p1}, false},
		{"replayed bytes", &taggedConn{Conn: &prefixConn{Conn: c, r: io.MultiReader(strings.NewReader("PRI * HTTP/2.0"), c)}}, false},
	} {
		var sc any = tc.conn
		s, isConn := sc.(syscall.Conn)
		if !isConn {
			t.Fatalf("%s: taggedConn is not a syscall.Conn", tc.name)
		}
		rc, err := s.SyscallConn()
		if (err == nil && rc != nil) != tc.ok {
			t.Errorf("%s: SyscallConn = %v, %v; want a RawConn: %v", tc.name, rc, err, tc.ok)
		}
	}
}
