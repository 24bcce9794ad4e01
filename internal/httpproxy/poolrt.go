package httpproxy

// A pool's round trip: a connection from the pool, the exchange on it,
// and a replay on a new one when a reused one was stale.

import (
	"errors"
	"io"
	"net/http"
	"time"
)

// RoundTrip sends req on a pooled connection. A request that may be
// repeated (no body, idempotent method) is sent again on a new connection
// when a reused one turns out closed, as http.Transport does.
func (p *Pool) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, _, err := p.RoundTripAt(req, time.Time{})
	return resp, err
}

// RoundTripAt is RoundTrip for a caller that reads the clock around the
// exchange anyway (the agent's latency figures): now is its reading of
// the monotonic clock (MonoTime) just before the call (zero: none), which
// the pool takes as its own (the idle time of the connection it reuses);
// at is the reading the pool took when the response head had been read
// (MonoTime, zero on an error), the end of the exchange's latency. Each
// request then reads the clock twice, not four times (about 40 ns each
// here).
func (p *Pool) RoundTripAt(req *http.Request, now time.Time) (resp *http.Response, at time.Time, err error) {
	replayable := BodyNone(req.Body) && isIdempotent(req.Method)
	for attempt := 0; ; attempt++ {
		// A replayable request is sent again if its connection was stale,
		// so only long-idle connections are checked first; others are
		// checked after a few idle milliseconds (one MSG_PEEK).
		checkAfter := checkIdleAfter
		if !replayable {
			checkAfter = checkIdleAfterBody
		}
		pc, err := p.get(req.Context(), attempt > 0, checkAfter, now)
		if err != nil {
			return nil, time.Time{}, err
		}
		pc.uses++
		resp, at, err := pc.guardedRoundTrip(req)
		if err == nil {
			return resp, at, nil
		}
		pc.close()
		if d := pc.duplex; d != nil && d.raise {
			panic(d.panicVal) // the body's read panicked on sendRest before the head (poolduplex.go)
		}
		if errors.Is(err, errStale) {
			if replayable && attempt == 0 {
				continue
			}
			err = io.ErrUnexpectedEOF // an upstream failure, as http.Transport reports it
		}
		return nil, time.Time{}, err
	}
}

// guardedRoundTrip is roundTrip closing the connection if it panics (a
// bug): the exchange is in no known state, and the rest of a body sent
// beside it (sendRest) to an endpoint that reads nothing would wait on
// its write for good, and the caller with it (the agent's joinDuplex
// waits for that goroutine before it lets go of the client).
func (pc *poolConn) guardedRoundTrip(req *http.Request) (resp *http.Response, at time.Time, err error) {
	returned := false
	defer func() {
		if !returned {
			pc.close()
		}
	}()
	resp, at, err = pc.roundTrip(req)
	returned = true
	return resp, at, err
}

// isIdempotent: a method that may be sent twice (RFC 9110 §9.2.2).
func isIdempotent(method string) bool {
	switch method {
	case "GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE":
		return true
	}
	return false
}
