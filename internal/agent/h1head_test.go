package agent

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"reflect"
	"testing"

	"github.com/fogmesh/fogmesh/internal/httpproxy"
)

// headRead is what readHead made of a head.
type headRead struct {
	lean, eligible, clte bool
	err                  error
	method, uri, host    string
	header               http.Header
	close                bool
}

// readHeadOf runs readHead on a client connection that sends pieces, one
// read each (net.Pipe: a read never joins two writes), as serveH1 does:
// the first piece buffered before readHead looks.
func readHeadOf(t *testing.T, pieces ...string) headRead {
	t.Helper()
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	go func() {
		for _, p := range pieces {
			if _, err := c2.Write([]byte(p)); err != nil {
				return
			}
		}
	}()
	br := bufio.NewReaderSize(c1, httpproxy.BufSize)
	if _, err := br.Peek(1); err != nil {
		t.Fatal(err)
	}
	cs := &h1ClientConn{ctx: context.Background(), wire: &h1Wire{c: c1}}
	req, eligible, clte, err := cs.readHead(br, c1)
	r := headRead{lean: req != nil, eligible: eligible, clte: clte, err: err}
	if req != nil {
		r.method, r.uri, r.host, r.header, r.close = req.Method, req.RequestURI, req.Host, req.Header, req.Close
	}
	return r
}

// TestH1ReadHeadSplit: the fast path reads a head that comes in two
// reads, split anywhere, as it reads the head whole (the lean parse first
// declines what is buffered, then PeekHeader waits for the rest): lean or
// not, eligible or not, and the same request.
func TestH1ReadHeadSplit(t *testing.T) {
	for _, tc := range []struct {
		head           string
		lean, eligible bool
	}{
		{"GET /a?b HTTP/1.1\r\nHost: h\r\nUser-Agent: x\r\nconnection: close\r\nAccept: a\r\naccept: b\r\n\r\n", true, true},
		{"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nok", false, true},
		{"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n", false, true},
		{"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n", false, false},
		{"GET / HTTP/1.1\nHost: h\n\n", false, true},
	} {
		want := readHeadOf(t, tc.head)
		if want.lean != tc.lean || want.eligible != tc.eligible || want.err != nil {
			t.Fatalf("%q whole: lean %t eligible %t (%v), want %t %t", tc.head, want.lean, want.eligible, want.err, tc.lean, tc.eligible)
		}
		for i := 1; i < len(tc.head); i++ {
			if got := readHeadOf(t, tc.head[:i], tc.head[i:]); !reflect.DeepEqual(got, want) {
				t.Fatalf("%q split at %d:\n got %+v\nwant %+v", tc.head, i, got, want)
			}
		}
	}
}
