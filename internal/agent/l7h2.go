package agent

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/http2"

	"github.com/fogmesh/fogmesh/internal/h2srv"
	"github.com/fogmesh/fogmesh/internal/h2up"
	"github.com/fogmesh/fogmesh/internal/httpproxy"
)

// HTTP/2 from clients: telling it from HTTP/1.1 on h2c and gRPC ports
// (sniffPreface), and fewer writes per response.
//
// Fewer writes for HTTP/2 responses: ReverseProxy flushes after every
// write of a response of unknown length (gRPC's), so a unary call's
// message left in one write and its trailers in another. When the
// upstream response has already ended (its last DATA and trailers are
// buffered), the flush is skipped: the message goes out with the trailers
// when the handler returns (h2srv), in one write.

// upstreamBody holds the response body lbTransport.RoundTrip returned for
// the request whose context carries it.
type upstreamBody struct{ body atomic.Pointer[io.ReadCloser] }

type upstreamBodyKey struct{}

// upstreamEnded reports whether r (a response body, through the agent's
// wrappers) has ended upstream: reads return the rest without waiting.
func upstreamEnded(r io.Reader) bool {
	if r == http.NoBody {
		return true
	}
	u, ok := r.(interface{ UpstreamEnded() bool })
	return ok && u.UpstreamEnded()
}

// lazyFlushWriter skips flushes while the upstream response has ended.
type lazyFlushWriter struct {
	http.ResponseWriter
	up   *upstreamBody
	body upstreamBody // what up points to when the handler made both
}

func (w *lazyFlushWriter) FlushError() error {
	if b := w.up.body.Load(); b != nil && upstreamEnded(*b) {
		return nil
	}
	return http.NewResponseController(w.ResponseWriter).Flush()
}

func (w *lazyFlushWriter) Flush() { w.FlushError() }

// Unwrap lets http.ResponseController reach the server's writer (deadlines).
func (w *lazyFlushWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// h2Call is what newL7's handler adds to an HTTP/2 request, in one
// allocation (wrapH2): the body's TimedBody, the lazy-flush writer and its
// upstreamBody, the send-timed writer, and the request's context; and
// what forwardH2 adds (it finds the h2Call by h2CallKey): the body
// shielded from the transport's Close, the X-Forwarded and identity
// header values.
type h2Call struct {
	ctx h2CallCtx
	tb  httpproxy.TimedBody
	lw  lazyFlushWriter
	sw  httpproxy.SendTimedWriter

	nc         noopCloseBody
	xfFor      [1]string
	xfHost     [1]string
	srcID      [1]string       // the identity header's value
	forwarding bool            // forwardH2 took nc and the values (once)
	detached   bool            // forwardH2 forwards it asynchronously (l7h2async.go)
	ref        h2srv.StreamRef // the h2srv stream's (none: another server's)
}

type h2CallKey struct{}

// h2CallCtx carries the upstreamBody and the TimedBody (if the request has
// a body), as two context.WithValue would.
type h2CallCtx struct {
	context.Context
	up   *upstreamBody
	tb   *httpproxy.TimedBody
	call *h2Call
}

func (c *h2CallCtx) Value(key any) any {
	switch key.(type) {
	case upstreamBodyKey:
		return c.up
	case h2CallKey:
		if c.call != nil { // none for an HTTP/1.x request (h1Call)
			return c.call
		}
	case httpproxy.TimedBodyKey:
		if c.tb != nil {
			return c.tb
		}
	}
	return c.Context.Value(key)
}

// WatchEnd and StopWatch watch the end of an h2srv request's context for
// h2up's streams, without context.AfterFunc's allocations
// (h2up.EndWatcher): only while the context is the request's own (not
// one made from it), whose end is the stream's (h2srv.StreamRef).
func (c *h2CallCtx) WatchEnd(e h2up.Ender) bool {
	return c.call != nil && c.call.ref.WatchEnd(c.Context, e)
}

func (c *h2CallCtx) StopWatch(e h2up.Ender) {
	if c.call != nil {
		c.call.ref.StopWatch(e)
	}
}

// wrapH2 sets up r's h2Call: the writer and the context the handler goes
// on with, the body's TimedBody (nil: no body) and the upstreamBody. A
// slow reader stalls its stream's flow control, not the connection's
// writes (taggedConn.Write): the stream's writes are bounded too.
func (s *l7) wrapH2(w http.ResponseWriter, r *http.Request, hasBody bool) (http.ResponseWriter, context.Context, *httpproxy.TimedBody, *upstreamBody) {
	c := &h2Call{}
	c.ctx.Context, c.ctx.call = r.Context(), c
	if hasBody {
		c.tb.Init(r.Body, httpproxy.ReadDeadlinerOf(w)) // what http.NewResponseController(w) reaches
		c.ctx.tb = &c.tb
	}
	c.lw = lazyFlushWriter{ResponseWriter: w}
	c.lw.up = &c.lw.body
	c.ctx.up = c.lw.up
	var out http.ResponseWriter = &c.lw
	if t, ok := r.Context().Value(targetKey{}).(listenTarget); ok {
		if d := s.sendTimeout(t); d > 0 {
			c.sw.Init(&c.lw, httpproxy.WriteDeadlinerOf(w), d) // lw's controller reaches w's
			out = &c.sw
		}
	}
	if c.ref = h2srv.RefOf(w); c.ref.Valid() { // r is the handler's own: its context set in place, not copied (newL7)
		*r = *r.WithContext(&c.ctx)
	}
	return out, &c.ctx, c.ctx.tb, c.lw.up
}

// h1Call is what newL7's handler adds to an HTTP/1.x request of the
// net/http server, in one allocation: the context that carries its
// upstreamBody and its TimedBody (if it has a body; no h2Call).
type h1Call struct {
	ctx h2CallCtx
	up  upstreamBody
}

// serveH2Port serves a client connection of an h2c or gRPC port: HTTP/2
// with prior knowledge by the HTTP/2 server (package h2srv), anything else
// (HTTP/1.1) by net/http's. It owns tc.
func (s *l7) serveH2Port(tc *taggedConn) {
	client := tc.Conn
	h2, read, err := sniffPreface(client)
	if h2 {
		s.serveH2(tc, true)
		return
	}
	if err != nil && len(read) == 0 {
		tc.Close()
		return
	}
	tc.Conn = &prefixConn{Conn: client, r: io.MultiReader(bytes.NewReader(read), client)}
	tc.buffered = true // see taggedConn
	if !s.ln.push(tc) {
		tc.Close()
	}
}

// errNoDescriptor: a taggedConn whose reads go through its buffer, or
// whose connection has no descriptor (TLS, a mesh stream).
var errNoDescriptor = errors.New("agent: connection read through a buffer or without a descriptor")

// SyscallConn passes the client connection's descriptor on while reads
// are not buffered: the HTTP/2 server then reads it inside RawConn.Read
// (h2srv, issue 14), past Read and raw. Writes still go through Write.
func (c *taggedConn) SyscallConn() (syscall.RawConn, error) {
	sc, ok := c.Conn.(syscall.Conn)
	if c.buffered || !ok {
		return nil, errNoDescriptor
	}
	return sc.SyscallConn()
}

// sniffPreface reads a client's first bytes as long as they match the
// HTTP/2 client preface: h2 when all of it came, else the bytes read (to
// replay) and the read error, if any.
func sniffPreface(c net.Conn) (h2 bool, read []byte, err error) {
	c.SetReadDeadline(time.Now().Add(httpproxy.HeaderTimeout))
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, len(http2.ClientPreface))
	n := 0
	for n < len(buf) {
		m, err := c.Read(buf[n:])
		n += m
		if !strings.HasPrefix(http2.ClientPreface, string(buf[:n])) || err != nil {
			return false, buf[:n], err
		}
	}
	return true, nil, nil
}
