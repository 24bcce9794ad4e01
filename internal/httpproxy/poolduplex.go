package httpproxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"time"
)

// Full duplex on a pool connection. A request body is written before its
// response is read, on the caller's goroutine (writeRequest): a body that
// is all there already (the common case, or no body) costs nothing more.
// When the body's next bytes are not there yet and the caller says how
// to wait for them (BodyWaiter, the agent's fast path), the pool waits at
// most earlyResponseWait at a time and looks at the endpoint in between:
// once the endpoint has answered (a head, or its end), the rest of the
// body goes on on a goroutine of its own (sendRest) while the caller reads
// the answer, so a client that waits for the answer's head before it
// sends the rest of its body (a streaming upload the endpoint answers as
// it reads, a bidirectional chunked stream) gets it. The connection goes
// back to the pool only if the whole body went out before the answer
// ended (endDuplex): else it is closed, which ends the write still going.

// BodyWaiter is how the pool waits for a request body's next bytes from
// the client (SetBodyWaiter). Its methods are called on the goroutine of
// the round trip, one at a time, and only while ReadReady(req.Body) is
// false: a reader between the client's body and the pool that holds bytes
// of it (a retry's kept bytes) must report them through ReadReady, or the
// pool would wait for the client, who sent them already, up to the body's
// bound.
type BodyWaiter interface {
	// BodyWaits reports whether the body's next Read would wait for the
	// client: nothing of it is buffered, and it has not ended.
	BodyWaits() bool
	// WaitBody waits at most d for the client's next bytes of the body:
	// true once they came (or its end, an error), or at once if the
	// body's own bound comes first (the Read then waits and fails as it
	// would have); false: d passed.
	WaitBody(d time.Duration) bool
	// Duplex: the endpoint answered while the body waits; the rest of the
	// body is read on another goroutine from now on, until done is
	// closed. false: not now (the round trip reads the body on itself).
	Duplex(done <-chan struct{}) bool
}

// SetBodyWaiter has the pools wait for the request bodies of requests on
// ctx (one of WithStreamCancel's, or derived from one) through w: set
// once, before the first request.
func SetBodyWaiter(ctx context.Context, w BodyWaiter) {
	if m, _ := ctx.Value(streamCancelKey{}).(*streamCancelMark); m != nil {
		m.body = w
	}
}

// bodyWaiterOf returns ctx's BodyWaiter (nil: none).
func bodyWaiterOf(ctx context.Context) BodyWaiter {
	if m, _ := ctx.Value(streamCancelKey{}).(*streamCancelMark); m != nil {
		return m.body
	}
	return nil
}

// errGoDuplex: the endpoint answered while the body waits for the client
// (copyBodyWatched).
var errGoDuplex = errors.New("httpproxy: answered while the request body waits")

// ErrBodyPanicked: a read of the request body panicked on the goroutine
// that sent its rest (sendRest; PoolConfig.OnPanic has the panic).
var ErrBodyPanicked = errors.New("httpproxy: the request body's read panicked")

// duplexWrite is the rest of a request body being sent (sendRest).
type duplexWrite struct {
	done chan struct{} // closed when sendRest ends
	err  error         // why it failed, if it did (read after done)
}

// copyBodyWatched is copyBody for a body whose client may wait for the
// answer before it sends the rest: before a Read that would wait, what
// was copied so far is flushed (the endpoint may answer it), and the
// endpoint is looked at every earlyResponseWait while the client sends
// nothing; errGoDuplex once it answered.
func (pc *poolConn) copyBodyWatched(ctx context.Context, w io.Writer, r io.Reader, buf []byte, bw BodyWaiter) (int64, error) {
	var n int64
	for {
		if !ReadReady(r) && bw.BodyWaits() {
			if err := pc.bw.Flush(); err != nil {
				return n, err
			}
			for !bw.WaitBody(earlyResponseWait) {
				if ctx.Err() != nil {
					break // the Read fails, or the round trip's hook did
				}
				if pc.answered() {
					return n, errGoDuplex
				}
			}
		}
		m, err := r.Read(buf)
		if m > 0 {
			if _, werr := w.Write(buf[:m]); werr != nil {
				return n, werr
			}
			n += int64(m)
		}
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// answered reports whether the endpoint has sent something (a head, its
// end, an error) while the request body waits, looked at without a wait:
// one MSG_PEEK on a socket, else a read whose deadline has passed (a mesh
// stream returns what it holds, or times out; a connection that fails
// such a read whatever it holds never goes full duplex).
func (pc *poolConn) answered() bool {
	if pc.br.Buffered() > 0 {
		return true
	}
	if pc.rc != nil {
		return pc.pending()
	}
	pc.c.SetReadDeadline(aLongTimeAgo)
	_, err := pc.br.Peek(1)
	pc.setReadDeadline(time.Time{}) // the poison kept
	return err == nil || !IsTimeout(err)
}

// goDuplex hands the rest of req's body (n bytes of it sent, to w, cw the
// chunked writer if chunked) to sendRest, with buf: false if the waiter
// refused.
func (pc *poolConn) goDuplex(req *http.Request, bwt BodyWaiter, w io.Writer, cw io.WriteCloser, buf []byte, n int64) bool {
	d := &duplexWrite{done: make(chan struct{})}
	if !bwt.Duplex(d.done) {
		return false
	}
	pc.duplex = d
	pc.inDuplex.Store(true)
	go pc.sendRest(d, req, w, cw, buf, n)
	return true
}

// sendRest sends the rest of a request body while its answer is read.
// A failure to read the body (the client's: its bound, its leaving)
// poisons the connection, so the answer's read ends too, as it would have
// in writeRequest; a failure to write it (the endpoint closed, or the
// round trip closed the connection once the answer ended) leaves the
// answer to end as it does.
func (pc *poolConn) sendRest(d *duplexWrite, req *http.Request, w io.Writer, cw io.WriteCloser, buf []byte, n int64) {
	defer close(d.done)
	defer func() {
		if p := recover(); p != nil {
			d.err = ErrBodyPanicked
			pc.poison()
			if f := pc.p.cfg.OnPanic; f != nil {
				f(p)
			}
		}
	}()
	for {
		m, err := req.Body.Read(buf)
		if m > 0 {
			if _, werr := w.Write(buf[:m]); werr != nil {
				d.err = werr
				break
			}
			n += int64(m)
			if werr := pc.bw.Flush(); werr != nil { // streamed: the endpoint may answer each part
				d.err = werr
				break
			}
		}
		if err == io.EOF {
			d.err = pc.endBody(req, cw, n)
			if d.err == nil {
				d.err = pc.bw.Flush()
			}
			break
		}
		if err != nil {
			d.err = err
			pc.poison()
			break
		}
	}
	CopyBuffers.Put(buf)
}

// endDuplex is whether a connection whose request body went on beside its
// answer (goDuplex) may be reused now that the answer has ended (reuse: as
// far as the answer goes): only if the whole body went out. If not, the
// connection is closed (the write still going fails: its bytes are no
// endpoint's), and the caller sees to what the client still sends.
func (pc *poolConn) endDuplex(reuse bool) bool {
	select {
	case <-pc.duplex.done:
		if pc.duplex.err != nil {
			return false
		}
		pc.duplex = nil
		pc.inDuplex.Store(false)
		return reuse
	default:
		return false
	}
}
