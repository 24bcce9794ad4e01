package h2up_test

import (
	"context"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/fogmesh/fogmesh/internal/h2up"
)

// halfPanicConn's Write, once armed, writes the first half of its bytes
// and panics (a bug of a connection's: its write fails part way).
type halfPanicConn struct {
	net.Conn
	armed *atomic.Bool
}

func (c halfPanicConn) Write(p []byte) (int, error) {
	if c.armed.CompareAndSwap(true, false) {
		c.Conn.Write(p[:len(p)/2])
		panic("test: a bug in a connection's write")
	}
	return c.Conn.Write(p)
}

// TestPanicInHeadersWriteClosesConn: a request whose HEADERS block is
// written in part when its write panics (a header block larger than the
// write buffer: the frame goes to the socket during the block's write)
// leaves the connection's framing and HPACK state broken, and the stream
// was never open at the endpoint: the connection is closed (no
// RST_STREAM for the stream, nothing more on it), the panic goes on to
// the caller, and the next request goes on a fresh connection and
// succeeds.
func TestPanicInHeadersWriteClosesConn(t *testing.T) {
	d := startDrainServer(t)
	addr := d.target.Load().(string)
	var armed atomic.Bool
	pool := h2up.New(h2up.Config{Dial: func(ctx context.Context) (net.Conn, error) {
		c, err := d.dial(ctx)
		if err != nil {
			return nil, err
		}
		return halfPanicConn{c, &armed}, nil
	}})
	defer pool.Close()
	get := func() { t.Helper(); getOKFrom(t, pool, addr) }
	get() // the connection is up
	p := func() (p any) {
		defer func() { p = recover() }()
		req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
		req.Header.Set("X-Big", strings.Repeat("b", 40<<10))
		armed.Store(true)
		pool.RoundTrip(req)
		return nil
	}()
	if p == nil || !strings.Contains(p.(string), "connection's write") {
		t.Fatalf("recovered %v, want the write's panic", p)
	}
	get() // on a fresh connection
	if n := d.dials.Load(); n != 2 {
		t.Errorf("%d dials, want 2 (the broken connection closed, a fresh one dialled)", n)
	}
}
