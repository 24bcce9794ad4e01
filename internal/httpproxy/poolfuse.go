package httpproxy

import (
	"bufio"
	"errors"
	"time"
)

// fuseIdleMax: a pool connection used again within this of its last
// response (or new) has a bodyless request written inside the read of its
// response (upWire, RawIO.WriteRead). What WriteRead does not cover is
// bytes the endpoint sent unasked before that read: here only its close
// of the connection, whose readiness the read would miss. An endpoint that
// closed for good answers the request's bytes with a reset, which wakes
// the read; one that only shut its side and reads on would leave the read
// waiting (until the request is cancelled) where a read at once would have
// found the end (errStale: sent again). An endpoint closes an idle
// connection after its keep-alive timeout, not within this of a response;
// a connection idle longer is written and read the ordinary way, as the
// rate that the fusion saves a system call at keeps connections busier.
var fuseIdleMax = time.Millisecond // a variable for tests

// fuseRecheck bounds the wait of a read that wrote a held request (to
// between it and twice it: sendHeld): past it the socket is read whatever
// the poller said, so an endpoint that shut
// its side just before the request costs this wait at most, then the
// request goes again (errStale). A slower answer costs a timer's wake and
// one read that finds the socket empty: few endpoints this busy are slower.
const fuseRecheck = 20 * time.Millisecond

// upWire is a pool connection's socket as its bufio reader and writer use
// it (NewRawIO's, over a file descriptor): it can hold a request's bytes
// for the read of its response (holdFlush), which writes them first
// (RawIO.WriteRead).
type upWire struct {
	raw     *RawIO
	held    []byte // the request, in the connection's bufio.Writer buffer
	holding bool   // Write keeps what it is given (holdFlush)
	// rechecking: the read deadline is still the last fused read's
	// (sendHeld), left set rather than cleared after every response; the
	// next read of any other kind clears it first (clear: the pool
	// connection's setReadDeadline, the poison kept), and any other
	// deadline set (setReadDeadline) ends it.
	rechecking bool
	until      time.Time // the deadline sendHeld set, while rechecking
	clear      func()
}

func (u *upWire) Write(p []byte) (int, error) {
	if u.holding {
		u.held = p
		return len(p), nil
	}
	return u.raw.Write(p)
}

// errHeldUnsent: the held request did not go out in one write; exchange
// writes the rest (sendHeld), outside the reader (a stalled write's
// OnStall reads it).
var errHeldUnsent = errors.New("httpproxy: held request not written whole")

func (u *upWire) Read(p []byte) (int, error) {
	held := u.held
	if held == nil {
		u.unrecheck()
		return u.raw.Read(p)
	}
	wn, n, err := u.raw.WriteRead(held, p)
	if wn < len(held) {
		u.held = held[wn:]
		return 0, errHeldUnsent
	}
	u.held = nil
	return n, err
}

// unrecheck clears the read deadline a fused read left (rechecking).
func (u *upWire) unrecheck() {
	if u.rechecking {
		u.rechecking = false
		u.clear()
	}
}

// flushRequest flushes bw, a bodyless request's bytes held for the read
// of its response if the connection fuses (fuseIdleMax).
func (pc *poolConn) flushRequest(bw *bufio.Writer, hold bool) error {
	u := pc.wire
	if !hold || u == nil || !pc.fuse {
		return bw.Flush()
	}
	u.holding = true
	err := bw.Flush()
	u.holding = false
	return err
}

// sendHeld sends a held request inside the read of its response's first
// bytes; werr is the write's failure, rerr the read's.
func (pc *poolConn) sendHeld() (werr, rerr error) {
	u := pc.wire
	if u == nil || u.held == nil {
		return nil, nil
	}
	// The deadline stays after the read (rechecking): whatever else reads
	// first clears it, and a busy connection's next fused read keeps it
	// while it is at least fuseRecheck away, else sets it 2 fuseRecheck
	// away: the wait is bounded by fuseRecheck to twice that, and the
	// deadline (a runtime timer's move) is set once per fuseRecheck, not
	// once per request. usedAt is get's clock reading, a few microseconds
	// before.
	at := pc.usedAt
	if at.IsZero() {
		at = MonoTime()
	}
	if !u.rechecking || u.until.Sub(at) < fuseRecheck {
		u.until = at.Add(2 * fuseRecheck)
		pc.setReadDeadline(u.until)
	}
	u.rechecking = true
	_, rerr = pc.br.Peek(1)
	if rerr != errHeldUnsent {
		if rerr != nil && IsTimeout(rerr) && !pc.poisoned.Load() {
			rerr = nil // fuseRecheck's: exchange reads the ordinary way
		}
		return nil, rerr
	}
	held := u.held
	u.held = nil
	if _, werr = u.raw.Write(held); werr != nil {
		return werr, nil
	}
	return nil, nil // the response's read follows the ordinary way
}

// setReadDeadline sets the connection's read deadline unless it was
// poisoned: poison stores poisoned before its deadline, this loads it
// after its own, so one of the two sees the other and the poison stays.
// Every read deadline of a pool connection is set here (poison's, from
// another goroutine, is the only other): a deadline set ends a fused
// read's left set (rechecking), so no read after it clears this one
// (upWire.unrecheck); sendHeld sets rechecking again after its own.
func (pc *poolConn) setReadDeadline(t time.Time) {
	if pc.wire != nil {
		pc.wire.rechecking = false
	}
	pc.c.SetReadDeadline(t)
	if pc.poisoned.Load() {
		pc.c.SetDeadline(aLongTimeAgo)
	}
}

// monoEpoch, MonoSince and MonoTime: the monotonic clock alone (one vDSO
// call, not time.Now's two), as the time since the package started, or as
// a time for a deadline (its wall reading is monoEpoch's moved on by the
// monotonic clock; deadlines and Sub read the monotonic one).
var monoEpoch = time.Now()

func MonoSince() time.Duration { return time.Since(monoEpoch) }

func MonoTime() time.Time { return monoEpoch.Add(time.Since(monoEpoch)) }

// MonoAt is the time of an earlier reading of MonoSince (d): what
// MonoTime returned then.
func MonoAt(d time.Duration) time.Time { return monoEpoch.Add(d) }
