package agent

import (
	"sync"
	"time"

	"github.com/fogmesh/fogmesh/internal/httpproxy"
)

// The fast path full duplex: the pool asks whether a request body's next
// bytes are there yet (httpproxy.BodyWaiter, this file), and once they
// are not, the rest of the body goes on on a goroutine of the pool's own
// while the round trip awaits the answer and forward writes it back;
// forward waits for that goroutine (joinDuplex) before it drains what the
// client still sends, and the serving loop before the connection's
// reader goes back to its pool (joinDuplex).

// duplexState is an h1ClientConn's part in full duplex.
type duplexState struct {
	// body is the request body forward's round trip sends (nil: none), of
	// bodyLen bytes (-1: chunked).
	body    *httpproxy.TimedBody
	bodyLen int64
	// duplexDone: one channel per attempt whose pool goroutine sends the
	// rest of the body (a retry's beside its first's), closed when it
	// ends; they read duplexBody (a retry's replay buffer orders their
	// reads). Reused for the connection's requests.
	duplexDone []<-chan struct{}
	duplexBody *httpproxy.TimedBody
	// bodyQueued: the client's socket held all the rest of body when
	// BodyWaits last looked (restQueued): its reads do not wait. Reset
	// with body, as bodyAsked (restQueued looked), for bodyUp, the
	// upstream connection it looked for (a retry's on another asks
	// again); bodyUp is let go by joinDuplex (no pool connection kept
	// by an idle client's).
	bodyQueued, bodyAsked bool
	bodyUp                httpproxy.SendRoomer
}

var _ httpproxy.BodyWaiter = (*h1ClientConn)(nil)

// BodyWaits: nothing of the body is buffered and it has not ended. Also
// while an earlier attempt's goroutine may read the client (a retry after
// a full duplex attempt; the pool asks only once the retry's replayBody
// holds nothing more for it): what it reads next comes to the retry
// through the replay buffer, when the client sends it (a retry that read
// it on the round trip's goroutine sent nothing meanwhile: a client that
// waited for an echo got a 408). The reader is that goroutine's then, not
// to be looked at here. Whatever the connection: a
// port of protocol auto replays its detected bytes through a wrapper with
// no socket (no RawIO), whose bodies never went full duplex (a client
// that waited for an echo waited until timeouts.requestBody); bytes such
// a wrapper still holds only cost a goroutine that need not have run.
func (cs *h1ClientConn) BodyWaits(up httpproxy.SendRoomer) bool {
	tb := cs.body
	if tb == nil {
		return false
	}
	if cs.duplexRunning() {
		return true
	}
	if cs.br.Buffered() > 0 {
		return false
	}
	if cs.bodyLen >= 0 && tb.Consumed() >= cs.bodyLen {
		return false // its Read returns the end without reading
	}
	return !tb.Ended() && !cs.restQueued(tb, up)
}

// restQueued: all the rest of a Content-Length body is in the client's
// socket (FIONREAD), as when a client writes its request whole: its reads
// do not wait, and the round trip reads them on its own goroutine, with no
// goroutine of the pool's for them (issue 14: one per upload longer than
// what the first read of the request took). Asked once per body; a body
// whose rest is not all there yet goes full duplex as before, and so does
// a rest over queuedRestMax, or over what the upstream connection takes
// without waiting for its endpoint (up.SendRoom: see queuedRestMax). A
// retry's attempt on another connection asks again: its replayed part
// went out, and the rest, still in the socket, must fit that one.
func (cs *h1ClientConn) restQueued(tb *httpproxy.TimedBody, up httpproxy.SendRoomer) bool {
	if cs.bodyQueued && up == cs.bodyUp {
		return true
	}
	rest := cs.bodyLen - tb.Consumed()
	if cs.bodyLen < 0 || rest > queuedRestMax || cs.wire == nil || cs.wire.raw == nil || cs.bodyAsked && up == cs.bodyUp {
		return false
	}
	cs.bodyAsked, cs.bodyUp = true, up
	n := cs.wire.raw.Queued()
	cs.bodyQueued = n > 0 && int64(n) >= rest && up != nil && int64(up.SendRoom()) >= rest
	return cs.bodyQueued
}

// queuedRestMax bounds the rest of a body restQueued lets the round trip
// write before it reads the answer: an endpoint that answers as it reads
// stops reading once its answer fills the sockets, so the rest must fit
// the kernel's buffers between them before the endpoint reads it: what
// the endpoint's receive window takes and the upstream socket's send
// buffer (Linux sizes it at the connect from the MSS and the initial
// window: megabytes on loopback, where the rest fits it alone whatever
// the endpoint answers or its SO_RCVBUF, TestFastQueuedRestAmplifyingEcho;
// tens of KiB over a NIC's MTU, with a default receive window of ~64 KiB
// beside it). A rest the upstream socket has no room for now (SendRoom:
// its free send buffer; TCP memory pressure shrinks it, a small MSS
// starts it small) goes full duplex: its write would stall on an
// endpoint that reads slowly behind a small SO_RCVBUF, and be taken for
// an early answer after earlyResponseWait (onStall), the endpoint never
// getting the rest (TestFastQueuedRestSmallSendBuffer).
const queuedRestMax = 64 << 10

// Duplex: the pool reads the body on another goroutine until done is
// closed. The body's end still arms the watch of a slow head (OnEnd, on
// that goroutine; joinDuplex stops a watch it armed after the head came).
// A retry's goroutine runs beside its first attempt's (BodyWaits).
func (cs *h1ClientConn) Duplex(done <-chan struct{}) bool {
	cs.duplexDone, cs.duplexBody = append(cs.duplexDone, done), cs.body
	return true
}

// duplexRunning: a pool goroutine sending a body's rest may run.
func (cs *h1ClientConn) duplexRunning() bool {
	for _, d := range cs.duplexDone {
		select {
		case <-d:
		default:
			return true
		}
	}
	return false
}

// joinDuplex waits for the pool's goroutine sending the rest of the body,
// if one runs: the client's reads are forward's again (a drain). The
// answer has ended (or failed): what the client still sends is no
// endpoint's, and must come within one timeouts.requestBody from now
// (TimedBody.Finish, as a drain's), whatever the answer's head lifted;
// cut (the connection closes, nothing is drained): the goroutine's read
// of the client is cut at once.
func (cs *h1ClientConn) joinDuplex(cut bool) {
	cs.bodyUp = nil
	if len(cs.duplexDone) == 0 {
		return
	}
	if cs.duplexRunning() {
		// A body the request timeout ended (TimedBody.Expire: its read's
		// deadline set in the past, which the goroutine may not have seen
		// yet) is cut too: Finish would set the deadline one gap ahead
		// again, and the 408 waited for it (timeouts.requestBody, 60 s
		// by default).
		if cut || cs.duplexBody.TimedOut() {
			cs.conn.SetReadDeadline(aLongTimeAgo)
		} else {
			cs.duplexBody.Finish()
		}
		for _, d := range cs.duplexDone {
			<-d
		}
	}
	clear(cs.duplexDone)
	cs.duplexDone, cs.duplexBody = cs.duplexDone[:0], nil
	// The body's end on that goroutine may have armed the watch of a slow
	// head after forward stopped it (the head came as the body ended): it
	// would read the client's connection beside the serving loop.
	cs.stopHead()
}

// watchBeside is watch for an answer that streams while a pool goroutine
// may still send the body's rest (full duplex): the client's reader is
// that goroutine's until it ends, so the watch of the client starts once
// every such goroutine has ended (at once, mostly: the body ended as the
// answer came), and not at all if the answer ends first or a watch of a
// slow head, armed by the body's end on that goroutine, reads the client
// instead. Without it, a client that left during a silent stream held
// the upstream when the goroutine was still between its last flush and
// its end as the answer's head came (TestFastDuplexClientGone/stream).
func (cs *h1ClientConn) watchBeside() (stop func()) {
	if !cs.duplexRunning() {
		return cs.watch()
	}
	cs.deadlineMoved() // here, on forward's goroutine: the wire's state is its
	dones := append([]<-chan struct{}(nil), cs.duplexDone...)
	var mu sync.Mutex
	stopped, peeking := false, false
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		defer cs.recoverWatch(false)
		for _, d := range dones {
			select {
			case <-d:
			case <-quit:
				return
			}
		}
		head := cs.headBusy()
		mu.Lock()
		if stopped || head || cs.br.Buffered() > 0 {
			mu.Unlock()
			return
		}
		peeking = true
		cs.conn.SetReadDeadline(time.Time{})
		mu.Unlock()
		if _, err := cs.br.Peek(1); err != nil && !httpproxy.IsTimeout(err) {
			cs.gone() // EOF, reset or shutdown
		}
	}()
	return func() {
		mu.Lock()
		stopped = true
		if peeking {
			cs.conn.SetReadDeadline(aLongTimeAgo)
		}
		mu.Unlock()
		close(quit)
		<-done
	}
}
