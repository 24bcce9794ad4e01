package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/h2up"
	"github.com/fogmesh/fogmesh/internal/httpproxy"
	"github.com/fogmesh/fogmesh/internal/retry"
)

// One request's attempts: which endpoint each goes to, whether an
// outcome is tried again (package retry decides, Envoy's semantics), the
// back-off between attempts, the per-try timeout, the request body kept
// for a retry (replayBody) and the answer when retries run out: the last
// upstream response, or the agent's own error when no endpoint answered.

// retryBodyLimit is the most of a request body kept to send again on a
// retry: a request whose body is longer is not retried once any of it
// may have been sent (Envoy buffers up to its connection buffer limit,
// 1 MiB by default; fogmesh keeps less, per request, on small nodes).
const retryBodyLimit = 64 << 10

// keptResponseLimit is the largest response body kept while a retry is
// tried, to answer with if the retry gets no response at all.
const keptResponseLimit = 64 << 10

// errPerTryTimeout: an attempt's per-try timeout ran out before response
// headers (answered 504 when not retried).
var errPerTryTimeout = fmt.Errorf("per-try timeout: %w", context.DeadlineExceeded)

// fogmeshDefaultOn: what a fogmesh RetryPolicy without On retries: no
// response (idempotent requests, unless Methods is "any").
var fogmeshDefaultOn = retry.On{Conds: retry.OnConnectFailure | retry.OnRefusedStream | retry.OnReset}

// retryPolicyOf turns a document's policy into the retry package's.
func retryPolicyOf(p api.RetryPolicy) retry.Policy {
	rp := retry.Policy{Retries: 2, On: fogmeshDefaultOn, AnyMethod: p.Methods == api.RetryMethodsAny}
	switch {
	case p.Attempts < 0:
		rp.Retries = 0
	case p.Attempts > 0:
		rp.Retries = p.Attempts
	}
	if p.On != "" {
		on, _, err := retry.Parse(p.On) // validated when applied
		if err == nil {
			rp.On = on
		}
	}
	if p.On5xx {
		rp.On.Conds |= retry.OnGatewayError
	}
	return rp
}

// roundTrip tries cands in order within the retry policy: the first
// candidate, then on a retry the next one not yet tried, and when every
// one has been tried the same ones again (after a back-off). A failed
// connect sent nothing: it moves on to the next candidate (up to
// maxAttempts connects) whatever the policy says. The loop's steps are
// l7attempt.go's.
func (lt *lbTransport) roundTrip(req *http.Request, sv *serviceView, t listenTarget, cands []*endpointView, policy api.RetryPolicy, route string, rec *reqObs, clk *reqShare) (*http.Response, error) {
	var l attempts
	lt.initAttempts(&l, req, sv, t, cands, policy, route, rec, clk)
	return l.run()
}

// mayRetry reports whether an attempt with outcome o is tried again: the
// policy retries it, retries are left, and the destination service's
// budget has a token.
func (lt *lbTransport) mayRetry(t listenTarget, pol retry.Policy, method string, replayable bool, o retry.Outcome, done int) bool {
	if done >= pol.Retries || !pol.Retry(method, replayable, o) {
		return false
	}
	if !lt.l7.a.retries.Withdraw(t.svc) {
		lt.l7.a.m.retriesDenied.Inc()
		return false
	}
	return true
}

// exhausted answers a request whose attempts are over without a response
// to return: the last upstream response, else the agent's error (no
// endpoint answered at all).
func (lt *lbTransport) exhausted(last *http.Response, err error) (*http.Response, error) {
	if last != nil {
		return last, nil
	}
	if errors.Is(err, errPerTryTimeout) {
		return nil, err
	}
	return nil, fmt.Errorf("all endpoints failed: %w", err)
}

// keepResponse reads a response about to be retried into memory, so it
// can still be the answer if no later attempt gets one; nil (and the
// response closed) when its body is of unknown length (it could stream
// for ever), too long to keep, fails, or has not all arrived within wait:
// a body that stalls must not hold up the retry (the read is abandoned
// and the body closed, which ends it). A panic in the read (a bug) is
// recovered and given to panicked (nil: the response is just dropped):
// the response is not kept, and is closed.
func keepResponse(resp *http.Response, wait time.Duration, panicked func(any)) *http.Response {
	httpproxy.ResponseHeader(resp) // a map of its own, which outlives the request (and is copied)
	if resp.ContentLength < 0 || resp.ContentLength > keptResponseLimit {
		resp.Body.Close()
		return nil
	}
	type read struct {
		b  []byte
		ok bool
	}
	done := make(chan read, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				done <- read{} // not kept: the response is closed at once
				if panicked != nil {
					panicked(p)
				}
			}
		}()
		b, err := io.ReadAll(io.LimitReader(resp.Body, resp.ContentLength+1))
		ok := err == nil && int64(len(b)) == resp.ContentLength
		if ok { // read to its end: the trailers are in
			_, err = io.Copy(io.Discard, resp.Body)
			ok = err == nil
		}
		done <- read{b, ok}
	}()
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case r := <-done:
		resp.Body.Close()
		if !r.ok {
			return nil
		}
		kept := *resp
		kept.Body = io.NopCloser(bytes.NewReader(r.b))
		return &kept
	case <-t.C:
		detachHeader(resp)
		go resp.Body.Close() // unblocks the read; Close may wait for it
		return nil
	}
}

// keptPanicked logs and counts a panic in keepResponse's read.
func (lt *lbTransport) keptPanicked(p any) { lt.l7.a.panicked("reading a retried response", p) }

// keepResponseWait bounds keepResponse's wait for a retried response's
// body: the per-try timeout, at most a second.
func keepResponseWait(perTry time.Duration) time.Duration {
	if perTry > 0 && perTry < time.Second {
		return perTry
	}
	return time.Second
}

// sleepBackoff waits Envoy's jittered back-off before retry n; false if
// the request ended first.
func sleepBackoff(ctx context.Context, n int) bool {
	t := time.NewTimer((retry.Backoff{}).Delay(n))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// refusedStream reports an HTTP/2 stream the endpoint reset with
// REFUSED_STREAM (it did not process it). net/http's HTTP/2 client
// reports it only in its error text.
func refusedStream(err error) bool { return strings.Contains(err.Error(), "REFUSED_STREAM") }

// retryAccount is a.retries.Account(svc) for a request to sv, a view of
// svc (its own or a destination's), kept with sv: no lock and map lookup
// per request. A new view looks it up again (the budget forgets the
// accounts of services gone from the view).
func (a *Agent) retryAccount(sv *serviceView, svc string) *retry.Account {
	if t := sv.retryAcct.Load(); t != nil {
		return t
	}
	t := a.retries.Account(svc)
	sv.retryAcct.Store(t)
	return t
}

// upstreamFailure reports whether a round-trip error came from the
// connection to the endpoint (reset, EOF, timeout) rather than from the
// request itself (a malformed request, a body the client aborted).
func upstreamFailure(err error) bool {
	if errors.Is(err, httpproxy.ErrClientBody) || errors.Is(err, errBodyGone) {
		return false // http.Transport reports a body read error as its own write's
	}
	var ne net.Error
	var se *h2up.StreamError // a stream reset by the endpoint (h2c, gRPC)
	return errors.As(err, &ne) || errors.As(err, &se) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, errNodeDead)
}

// idempotent methods may be retried after they reached an endpoint (RFC 9110 §9.2.2).
var idempotent = map[string]bool{"GET": true, "HEAD": true, "OPTIONS": true, "TRACE": true, "PUT": true, "DELETE": true}

// attemptAt is one attempt's round trip, counted in active (raised by the
// caller) until it returns. A panic in it (a bug: l7panic.go) lowers the
// count and releases the attempt's node watch and timer (release) before
// it goes on: least-request balancing would see the endpoint busy for
// good, and the watch would stay in nodeWatches.
func (a *Agent) attemptAt(rt http.RoundTripper, sv *serviceView, ev *endpointView, req *http.Request, start time.Time, active *atomic.Int64, release func()) (resp *http.Response, end time.Time, err error) {
	returned := false
	defer func() {
		active.Add(-1)
		if !returned {
			release()
		}
	}()
	if p, ok := rt.(*httpproxy.Pool); ok && len(sv.svc.Spec.Egress) == 0 {
		resp, end, err = p.RoundTripAt(req, start) // the pool shares the clock's readings (no egress rules to apply: egressRoundTrip's)
	} else {
		resp, err = a.egressRoundTrip(rt, sv, ev, req)
	}
	returned = true
	return resp, end, err
}
