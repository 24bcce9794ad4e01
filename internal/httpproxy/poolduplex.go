package httpproxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync/atomic"
)

// Full duplex on a pool connection. A request body is written before its
// response is read, on the caller's goroutine (writeRequest): a body that
// is all there already (the common case, or no body) costs nothing more.
// When the body's next bytes are not there yet and the caller says how
// to tell (BodyWaiter, the agent's fast path), what was written so far is
// flushed and the rest of the body goes on on a goroutine of its own
// (sendRest) while the caller reads the answer, as net/http's Transport
// always does: a client that waits for the answer's head, or an echo of
// its first part, before it sends the rest (a streaming upload the
// endpoint answers as it reads, a bidirectional chunked stream) gets it
// as soon as the endpoint sends it. (The pool used to wait for the
// client up to earlyResponseWait at a time and look at the endpoint in
// between: each stream's first answer came up to 100 ms late.) The
// connection goes back to the pool only if the whole body went out
// before the answer ended (endDuplex): else it is closed, which ends the
// write still going.

// BodyWaiter tells the pool when a request body's next bytes are not
// there yet (SetBodyWaiter). Its methods are called on the goroutine of
// the round trip, one at a time, and only while ReadReady(req.Body) is
// false: a reader between the client's body and the pool that holds bytes
// of it (a retry's kept bytes) must report them through ReadReady, or the
// pool would go full duplex for bytes the client sent already.
type BodyWaiter interface {
	// BodyWaits reports whether the body's next Read would wait for the
	// client: nothing of it is buffered, and it has not ended. up is the
	// connection the body goes to: a waiter that says false for bytes the
	// client sent but nobody read yet (its socket's) says so only for as
	// many as up takes without waiting (up.SendRoom): the round trip
	// writes them before it reads the answer, and a write that waits on
	// an endpoint that answered is taken for an early answer (onStall).
	BodyWaits(up SendRoomer) bool
	// Duplex: the body waits; the rest of it is read on another goroutine
	// from now on, until done is closed, while the answer is awaited and
	// read. false: not now (the round trip reads the body on itself).
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

// errGoDuplex: the body waits for the client (copyBody with a BodyWaiter).
var errGoDuplex = errors.New("httpproxy: the request body waits for the client")

// ErrBodyPanicked: a read of the request body panicked on the goroutine
// that sent its rest (sendRest) after the answer's head was returned
// (PoolConfig.OnPanic has the panic; before it, RoundTrip panics with it).
var ErrBodyPanicked = errors.New("httpproxy: the request body's read panicked")

// BodyPanicError is how the read of an answer fails when the read of its
// request's body panicked on sendRest after the head was returned: the
// panic's value, for the caller's record of the request (OnPanic logged
// and counted it). It is ErrBodyPanicked (errors.Is).
type BodyPanicError struct{ Value any }

func (e *BodyPanicError) Error() string     { return ErrBodyPanicked.Error() }
func (e *BodyPanicError) Is(err error) bool { return err == ErrBodyPanicked }

// A panic in a body's read on sendRest is the round trip's as long as the
// round trip has not returned the answer's head: it panics on with the
// same value once the connection is closed (RoundTripAt), as a panic in
// writeRequest on the caller's goroutine would, so the caller records and
// counts it as a panic in its attempt. After the head, sendRest hands it
// to PoolConfig.OnPanic and the answer's read fails (the connection is
// poisoned). Who takes it is settled once (duplexWrite.state): each panic
// is raised again or reported, never both.
const (
	duplexOpen     int32 = iota // sendRest runs, the round trip awaits the head
	duplexPanicked              // sendRest panicked (panicVal): the round trip raises it
	duplexAnswered              // the round trip is done with the head: sendRest reports its panic
)

// duplexWrite is the rest of a request body being sent (sendRest).
type duplexWrite struct {
	done chan struct{} // closed when sendRest ends
	err  error         // why it failed, if it did (read after done)
	// bodyErr is the body's read failure (the client's: its bound, its
	// leaving), stored before sendRest poisons the connection: the round
	// trip's read fails with it, not as the endpoint's failure (readFailed
	// set after it).
	bodyErr    error
	readFailed atomic.Bool
	// state says who takes a panic of sendRest (duplexOpen...); panicVal
	// is its value, written before state becomes duplexPanicked. raise:
	// the round trip took it (RoundTripAt panics with panicVal).
	state    atomic.Int32
	panicVal any
	raise    bool
	// sent: the whole body went out (its end flushed, err nil), set just
	// before sendRest ends: an answer that ends then (a HEAD, 204 or 304
	// answer ends at its head) may reuse the connection (endDuplex).
	sent atomic.Bool
}

// endHead is called by the round trip once it is done waiting for the
// answer's head (whatever came of it): whether sendRest panicked before
// that (d.raise: the round trip panics on with it).
func (d *duplexWrite) endHead() bool {
	d.raise = d.state.Swap(duplexAnswered) == duplexPanicked
	return d.raise
}

// bodyPanic is the answer's read failure err, or the body's panic on
// sendRest if one poisoned the connection (BodyPanicError).
func (d *duplexWrite) bodyPanic(err error) error {
	if perr := d.panicked(); perr != nil {
		return perr
	}
	return err
}

// panicked is the body's panic on sendRest (nil: none so far).
func (d *duplexWrite) panicked() *BodyPanicError {
	if d.readFailed.Load() {
		if perr, ok := d.bodyErr.(*BodyPanicError); ok {
			return perr
		}
	}
	return nil
}

// duplexErr is err, the round trip's failure to read the answer, or the
// body's if sendRest failed to read it first (it poisoned the connection:
// the client's doing, not the endpoint's).
func (pc *poolConn) duplexErr(err error) error {
	if d := pc.duplex; d != nil && d.readFailed.Load() {
		return d.bodyErr
	}
	return err
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
	// The request's context ending (the agent: its client gone, or its
	// connection ended) poisons the connection while the rest is sent: a
	// write to an endpoint that reads nothing ends then, also when the
	// answer was read whole already and nobody closes it (a caller that
	// panicked): the agent waits for this goroutine (joinDuplex).
	stop := noStop
	if ctx := req.Context(); ctx.Done() != nil {
		stop = context.AfterFunc(ctx, pc.poison)
	}
	defer stop()
	defer func() {
		if p := recover(); p != nil {
			perr := &BodyPanicError{p}
			d.err, d.bodyErr = perr, perr
			d.panicVal = p
			d.readFailed.Store(true)
			// Before the poison: the head's read it fails sees the panic
			// taken for it (endHead).
			mine := !d.state.CompareAndSwap(duplexOpen, duplexPanicked)
			pc.poison()
			if f := pc.p.cfg.OnPanic; mine && f != nil {
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
			if d.err = pc.endBody(req, cw, n); d.err != nil {
				// Shorter than its Content-Length: the endpoint waits
				// for the rest, the answer's read with it (writeRequest's
				// caller closes the connection so).
				d.bodyErr = d.err
				d.readFailed.Store(true)
				pc.poison()
				break
			}
			if d.err = pc.bw.Flush(); d.err == nil && !stop() {
				d.err = errRestCut // the poison may come yet: not reused
			} else if d.err == nil {
				d.sent.Store(true) // nothing of pc's is used from here on
				if h := pc.p.testHookRestSent; h != nil {
					h()
				}
			}
			break
		}
		if err != nil {
			d.err, d.bodyErr = err, err
			d.readFailed.Store(true)
			pc.poison()
			break
		}
	}
	CopyBuffers.Put(buf)
}

// noStop is a context.AfterFunc stop for no context.
func noStop() bool { return true }

// errRestCut: the request's context ended as its body's rest went out
// (sendRest): the connection is poisoned.
var errRestCut = errors.New("httpproxy: the request ended as its body was sent")

// endDuplex is whether a connection whose request body went on beside its
// answer (goDuplex) may be reused now that the answer has ended (reuse: as
// far as the answer goes): only if the whole body went out. If not, the
// connection is closed (the write still going fails: its bytes are no
// endpoint's), and the caller sees to what the client still sends.
//
// A goroutine whose body went out whole (sent) counts as ended: what it
// has left to do (put its buffer back, close done) touches nothing of
// the connection's, and an endpoint that answers as the body ends found
// it there often enough (the answer's head read as sendRest returns from
// its last flush) to lose a bodyless answer's reuse.
func (pc *poolConn) endDuplex(reuse bool) bool {
	if d := pc.duplex; !d.sent.Load() {
		select {
		case <-d.done:
			if d.err != nil {
				return false
			}
		default:
			return false
		}
	}
	pc.duplex = nil
	pc.inDuplex.Store(false)
	return reuse
}
