package agent

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"

	"github.com/VictoriaMetrics/metrics"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/mask"
)

// Egress masking (issue 5): a request on an http, http2 or grpc port whose
// chosen endpoint a service's egress rule selects (another site, another
// region, named sites or regions) leaves this agent with its headers and
// body masked by the rule's mask.Masker. The decision is per attempt: a
// request that fails over from a same-site endpoint to a cloud one is
// masked for the cloud one only. Bodies are masked as they stream; they
// are never buffered here; a retry sends a body again only from its start
// (l7retry.go keeps bodies of at most 64 KiB for that), masked afresh, so
// a retry never replays a half-read body.
//
// Responses are not masked: they come back into the site.
//
// A body the masker cannot judge is refused before anything is sent (the
// client gets 502 naming the reason, counted as result="rejected"): more
// than one Content-Type (repeated fields or a comma list; a backend may
// read either), a Content-Type that is no media type or has a UTF-16/32
// charset, with onCompressed: reject any Content-Encoding coding other
// than identity (with decode: any but one gzip or deflate, which is
// inflated, masked and compressed again), and with onUpgrade: reject a
// request that asks to switch protocols (WebSocket, CONNECT: the stream
// after the switch is no body). mask.Classify and mask.CheckUpgrade
// decide; see package mask.
//
// Metrics:
//
//	fogmesh_egress_masked_fields_total{service,detector}  values masked, by detector, regex name, "json-path" or "header"
//	fogmesh_egress_bodies_total{service,rule,result}      result: masked, failed (malformed, request aborted), rejected (compressed, ambiguous type, upgrade: not sent)

// errEgress wraps egress failures. They are about the request, not the
// endpoint: no ejection, no retry (see upstreamFailure).
var errEgress = errors.New("egress masking")

// egressRule is a compiled api.EgressRule.
type egressRule struct {
	name string
	when api.EgressWhen
	m    *mask.Masker
	err  error // a rule that did not compile rejects every request it selects
}

// egressRules returns the service's compiled rules.
func (sv *serviceView) egressRules() []egressRule {
	sv.egressOnce.Do(func() {
		for _, r := range sv.svc.Spec.Egress {
			m, err := mask.Compile(r.Mask)
			sv.egress = append(sv.egress, egressRule{name: r.Name, when: r.When, m: m, err: err})
		}
	})
	return sv.egress
}

// selects reports whether the rule applies to requests sent to ev.
func (r *egressRule) selects(ev *endpointView) bool {
	if ev.local || ev.tier == TierNode {
		return false
	}
	w := &r.when
	return w.LeavingSite && ev.tier >= TierRegion ||
		w.LeavingRegion && ev.tier == TierAny ||
		ev.region != "" && slices.Contains(w.ToRegions, ev.region) ||
		ev.site != "" && slices.Contains(w.ToSites, ev.site)
}

// egressRoundTrip sends req to ev through rt, masked by the first egress
// rule of the service that selects ev; unchanged when none does.
func (a *Agent) egressRoundTrip(rt http.RoundTripper, sv *serviceView, ev *endpointView, req *http.Request) (*http.Response, error) {
	if len(sv.svc.Spec.Egress) == 0 {
		return rt.RoundTrip(req)
	}
	var rule *egressRule
	rules := sv.egressRules()
	for i := range rules {
		if rules[i].selects(ev) {
			rule = &rules[i]
			break
		}
	}
	if rule == nil {
		return rt.RoundTrip(req)
	}
	svc := sv.svc.Meta.Key()
	if rule.err != nil {
		a.egressBodies(svc, rule.name, "rejected").Inc()
		return nil, fmt.Errorf("%w: rule %q: %v", errEgress, rule.name, rule.err)
	}
	if err := rule.m.CheckUpgrade(req.Method, req.Header); err != nil {
		a.egressBodies(svc, rule.name, "rejected").Inc()
		return nil, fmt.Errorf("%w: rule %q: %w", errEgress, rule.name, err)
	}
	report := func(label string, n int) {
		a.cfg.Metrics.GetOrCreateCounter(fmt.Sprintf(`fogmesh_egress_masked_fields_total{service=%q,detector=%q}`, svc, label)).Add(n)
	}
	out := req.Clone(req.Context())
	counts := map[string]int{}
	rule.m.MaskHeader(out.Header, counts)
	for label, n := range counts {
		report(label, n)
	}
	var mb *maskedBody
	if req.Body != nil && req.Body != http.NoBody {
		kind, err := rule.m.Classify(out.Header)
		if err != nil {
			a.egressBodies(svc, rule.name, "rejected").Inc()
			return nil, fmt.Errorf("%w: rule %q: %w", errEgress, rule.name, err)
		}
		if kind != mask.KindPass {
			mb = &maskedBody{r: rule.m.NewReader(req.Body, kind, report), c: req.Body,
				done: func(result string) { a.egressBodies(svc, rule.name, result).Inc() }}
			out.Body, out.GetBody, out.ContentLength = mb, nil, -1
			out.Header.Del("Content-Length") // the body is rewritten: chunked
		}
	}
	resp, err := rt.RoundTrip(out)
	if err != nil && mb != nil {
		if merr := mb.failure(); merr != nil {
			return nil, fmt.Errorf("%w: rule %q: request not sent on: %w", errEgress, rule.name, merr)
		}
	}
	return resp, err
}

func (a *Agent) egressBodies(svc, rule, result string) *metrics.Counter {
	return a.cfg.Metrics.GetOrCreateCounter(fmt.Sprintf(`fogmesh_egress_bodies_total{service=%q,rule=%q,result=%q}`, svc, rule, result))
}

// maskedBody is a request body read through a mask.Reader. The transport
// reads it on its own goroutine.
type maskedBody struct {
	r    io.Reader
	c    io.Closer
	done func(result string)

	mu  sync.Mutex // guards the following
	err error      // the masking error, if masking failed
	end bool       // done was called
}

func (b *maskedBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil {
		b.mu.Lock()
		if !b.end {
			b.end = true
			switch {
			case err == io.EOF:
				b.done("masked")
			case errors.Is(err, mask.ErrMalformed):
				b.err = err
				b.done("failed")
			}
		}
		b.mu.Unlock()
	}
	return n, err
}

func (b *maskedBody) Close() error { return b.c.Close() }

// failure returns the masking error, if any.
func (b *maskedBody) failure() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}
