package h2up_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/h2up"
)

// failWriteConn's Write, once armed, fails (a socket whose write fails:
// the endpoint reset the connection).
type failWriteConn struct {
	net.Conn
	armed *atomic.Bool
}

func (c failWriteConn) Write(p []byte) (int, error) {
	if c.armed.Load() {
		return 0, errors.New("test: write failed")
	}
	return c.Conn.Write(p)
}

// TestStartWriteErrorNotCompleted: a Start (and a StartLater whose
// header block goes to the socket in its write) whose request's write
// fails has its failure answered once: Start's error (the completion not
// called: Start's contract), or, the stream failed first with its
// connection, the completion's, Start returning nil. Both were: the
// stream's reset called the completion on a goroutine and Start returned
// the error: the agent's attempt loop then went on twice (a retry, or
// the answer, from each), answering its client's stream twice and giving
// back what the request held twice.
func TestStartWriteErrorNotCompleted(t *testing.T) {
	for _, later := range []bool{false, true} {
		d := startDrainServer(t)
		addr := d.target.Load().(string)
		var armed atomic.Bool
		pool := h2up.New(h2up.Config{Dial: func(ctx context.Context) (net.Conn, error) {
			c, err := d.dial(ctx)
			if err != nil {
				return nil, err
			}
			return failWriteConn{c, &armed}, nil
		}})
		defer pool.Close()
		getOKFrom(t, pool, addr) // the connection is up
		var calls atomic.Int32
		done := h2up.CompletionFunc(func(*http.Response, error, *h2up.ReadLoop) { calls.Add(1) })
		req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
		if later {
			req.Header.Set("X-Big", strings.Repeat("b", 40<<10)) // past the write buffer: written in open
		}
		armed.Store(true)
		var err error
		if later {
			_, err = pool.StartLater(req, done)
		} else {
			err = pool.Start(req, done)
		}
		// The failure is answered once: by Start's error, or (the
		// stream failed first, with its connection) by the completion.
		want := int32(0)
		if err == nil {
			want = 1
		}
		// A completion is called on a goroutine at once: give it the
		// time to run.
		deadline := time.Now().Add(200 * time.Millisecond)
		for calls.Load() <= want && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if n := calls.Load(); n != want {
			t.Errorf("later %v: Start returned %v and its completion was called %d times", later, err, n)
		}
	}
}
