package agent

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
)

const (
	// mirrorMaxBody: a request with a longer body (or one of unknown
	// length, such as a gRPC stream) is not mirrored, so mirroring never
	// holds a client's body back or buffers much of it.
	mirrorMaxBody = 64 << 10
	// mirrorMaxInflight bounds the copies in flight per agent; beyond it
	// copies are dropped rather than queued.
	mirrorMaxInflight = 64
	// mirrorTimeout bounds a copy when the route sets no request timeout.
	mirrorTimeout = 10 * time.Second
)

// mirror sends a copy of req to the rule's mirror target, fire and forget,
// for MirrorPercent of requests. It returns the request to forward (its
// body restored after buffering). The outcome is counted in
// fogmesh_http_mirror_requests_total{service,target,result}.
func (lt *lbTransport) mirror(req *http.Request, sv *serviceView, t listenTarget, m *api.Mirror, timeout time.Duration) *http.Request {
	if !chance(m.MirrorPercent()) {
		return req
	}
	a := lt.l7.a
	target := sv.svc.Meta.Namespace + "/" + m.Service
	if m.Service == "" {
		target = t.svc
	}
	count := func(result string) {
		a.cfg.Metrics.GetOrCreateCounter(fmt.Sprintf(`fogmesh_http_mirror_requests_total{service=%q,target=%q,result=%q}`, t.svc, target, result)).Inc()
	}
	var body []byte
	if req.Body != nil && req.Body != http.NoBody {
		if req.ContentLength < 0 || req.ContentLength > mirrorMaxBody {
			count("body_too_large")
			return req
		}
		b, err := io.ReadAll(io.LimitReader(req.Body, req.ContentLength))
		// Forward what was read, then whatever follows (an error included).
		req.Body = readCloser{io.MultiReader(bytes.NewReader(b), req.Body), req.Body}
		if err != nil || int64(len(b)) != req.ContentLength {
			count("body_error")
			return req
		}
		body = b
	}
	msv := a.view.Load().services[target]
	if msv == nil {
		count("no_endpoint")
		return req
	}
	port, proto := t.port, ""
	for _, p := range msv.svc.Spec.Ports {
		if p.Name == port {
			proto = p.Protocol
		}
	}
	if !isL7(proto) {
		count("no_endpoint")
		return req
	}
	var cands []*endpointView
	if labels, ok := msv.subsets[m.Subset]; ok || m.Subset == "" {
		cands = a.pickSubset(msv, port, m.Subset, labels)
	}
	if len(cands) == 0 {
		count("no_endpoint")
		return req
	}
	if n := lt.l7.mirrors.Add(1); n > mirrorMaxInflight {
		lt.l7.mirrors.Add(-1)
		count("dropped")
		return req
	}
	// The copy's goroutine is one of the agent's (a.wg), added under mu
	// unless Close began: the handler calling this is not counted, and
	// may outlive the L7 server's Shutdown, so an Add after Close's Wait
	// began would be WaitGroup misuse and a copy Close never waits for.
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		lt.l7.mirrors.Add(-1)
		count("dropped")
		return req
	}
	a.wg.Add(1)
	ctx := a.runCtx
	a.mu.Unlock()
	if ctx == nil {
		ctx = context.Background()
	}
	if timeout <= 0 {
		timeout = mirrorTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	out := req.Clone(ctx)
	out.Host = shadowHost(req.Host)
	out.URL.Host = out.Host
	out.Body, out.ContentLength = http.NoBody, 0
	if body != nil {
		out.Body, out.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
	}
	out.GetBody = nil
	ev := cands[0]
	tr := lt.l7.transportFor(msv, ev, port, proto)
	go func() { // sendMirror
		defer a.wg.Done()
		defer lt.l7.mirrors.Add(-1)
		defer cancel()
		// A panic (a bug: in an authorization's DecisionLogger, a body's
		// read) is logged and counted; the copy's response is closed.
		var resp *http.Response
		defer func() {
			if p := recover(); p != nil {
				count("panic")
				a.panicked("sending a mirrored request", p)
				if resp != nil {
					defer a.recoverGo("closing a mirrored request's response") // a Close that panics too
					resp.Body.Close()
				}
			}
		}()
		// The copy leaves like any request: the egress rules of the
		// service it is sent to mask it, and so do those of the service
		// the client asked for, whose data it is.
		var rt http.RoundTripper = roundTripFunc(func(r *http.Request) (*http.Response, error) {
			return a.egressRoundTrip(tr, msv, ev, r)
		})
		if msv != sv {
			inner := rt
			rt = roundTripFunc(func(r *http.Request) (*http.Response, error) {
				return a.egressRoundTrip(inner, sv, ev, r)
			})
		}
		// A copy to an endpoint without an agent of its own is
		// authorized here, as the original would be.
		if decidesHere(ev) {
			if resp, _ := a.authorizeLocalRequest(out, listenTarget{svc: target, port: port}); resp != nil {
				count("denied")
				return
			}
		}
		var err error
		resp, err = rt.RoundTrip(out)
		if err != nil {
			count("error")
			return
		}
		io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		count(fmt.Sprintf("%dxx", resp.StatusCode/100))
	}()
	return req
}

// shadowHost appends "-shadow" to the host part, as Istio does.
func shadowHost(host string) string {
	if h, p, err := net.SplitHostPort(host); err == nil {
		return net.JoinHostPort(h+"-shadow", p)
	}
	return host + "-shadow"
}

// readCloser reads from r and closes c.
type readCloser struct {
	io.Reader
	c io.Closer
}

func (r readCloser) Close() error { return r.c.Close() }
