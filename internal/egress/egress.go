// Package egress masks requests that leave a site (issue 5): a service's
// egress rules say which destinations (another site, another region, named
// sites or regions) get its requests' headers and bodies masked by the
// rule's mask.Masker. It decides per request and destination and wraps one
// round trip; which endpoint is picked, and the metrics, are the caller's.
//
// Bodies are masked as they stream; they are never buffered, so a caller
// that retries must retry only what sent nothing (a failed connect reads
// no body) or has no body. Responses are not masked: they come back into
// the site.
//
// A body the masker cannot judge is refused before anything is sent: more
// than one Content-Type (repeated fields or a comma list; a backend may
// read either), a Content-Type that is no media type or has a UTF-16/32
// charset, with onCompressed: reject any Content-Encoding coding other
// than identity (with decode: any but one gzip or deflate, which is
// inflated, masked and compressed again), and with onUpgrade: reject a
// request that asks to switch protocols (WebSocket, CONNECT: the stream
// after the switch is no body). mask.Classify and mask.CheckUpgrade
// decide; see package mask.
package egress

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/mask"
)

// ErrMasking wraps every failure of RoundTrip's own (a rule that did not
// compile, a refused or malformed body). Such a failure is about the
// request, not the destination: callers neither eject nor retry.
var ErrMasking = errors.New("egress masking")

// Rule is a compiled api.EgressRule.
type Rule struct {
	Name string
	When api.EgressWhen
	m    *mask.Masker
	err  error // a rule that did not compile rejects every request it selects
}

// Compile compiles rules. A rule whose mask does not compile is kept: it
// refuses every request it selects, so a bad rule never lets data out
// unmasked.
func Compile(rules []api.EgressRule) []Rule {
	out := make([]Rule, 0, len(rules))
	for _, r := range rules {
		m, err := mask.Compile(r.Mask)
		out = append(out, Rule{Name: r.Name, When: r.When, m: m, err: err})
	}
	return out
}

// Dest is where a request goes, relative to the sending agent.
type Dest struct {
	// SameNode is a workload on the sending node: never masked.
	SameNode bool
	// SameSite and SameRegion place the destination's node.
	SameSite, SameRegion bool
	// Site and Region name it ("" when unknown, as for a static endpoint).
	Site, Region string
}

// Selects reports whether the rule applies to requests sent to d.
func (r *Rule) Selects(d Dest) bool {
	if d.SameNode {
		return false
	}
	w := &r.When
	return w.LeavingSite && !d.SameSite ||
		w.LeavingRegion && !d.SameRegion ||
		d.Region != "" && slices.Contains(w.ToRegions, d.Region) ||
		d.Site != "" && slices.Contains(w.ToSites, d.Site)
}

// Hooks receive RoundTrip's counts; nil hooks are not called.
type Hooks struct {
	// Masked counts n values masked by detector: a regex detector's
	// name, "json-path" or "header".
	Masked func(detector string, n int)
	// Body counts a body under rule by result: masked, failed (malformed,
	// request aborted) or rejected (compressed, ambiguous type, upgrade,
	// a rule that did not compile: not sent).
	Body func(rule, result string)
}

func (h Hooks) masked(detector string, n int) {
	if h.Masked != nil {
		h.Masked(detector, n)
	}
}

func (h Hooks) body(rule, result string) {
	if h.Body != nil {
		h.Body(rule, result)
	}
}

// RoundTrip sends req to d through rt, masked by the first of rules that
// selects d; unchanged when none does.
func RoundTrip(rt http.RoundTripper, rules []Rule, d Dest, req *http.Request, h Hooks) (*http.Response, error) {
	var rule *Rule
	for i := range rules {
		if rules[i].Selects(d) {
			rule = &rules[i]
			break
		}
	}
	if rule == nil {
		return rt.RoundTrip(req)
	}
	if rule.err != nil {
		h.body(rule.Name, "rejected")
		return nil, fmt.Errorf("%w: rule %q: %v", ErrMasking, rule.Name, rule.err)
	}
	if err := rule.m.CheckUpgrade(req.Method, req.Header); err != nil {
		h.body(rule.Name, "rejected")
		return nil, fmt.Errorf("%w: rule %q: %w", ErrMasking, rule.Name, err)
	}
	out := req.Clone(req.Context())
	counts := map[string]int{}
	rule.m.MaskHeader(out.Header, counts)
	for label, n := range counts {
		h.masked(label, n)
	}
	var mb *maskedBody
	if req.Body != nil && req.Body != http.NoBody {
		kind, err := rule.m.Classify(out.Header)
		if err != nil {
			h.body(rule.Name, "rejected")
			return nil, fmt.Errorf("%w: rule %q: %w", ErrMasking, rule.Name, err)
		}
		if kind != mask.KindPass {
			mb = &maskedBody{r: rule.m.NewReader(req.Body, kind, h.masked), c: req.Body,
				done: func(result string) { h.body(rule.Name, result) }}
			out.Body, out.GetBody, out.ContentLength = mb, nil, -1
			out.Header.Del("Content-Length") // the body is rewritten: chunked
		}
	}
	resp, err := rt.RoundTrip(out)
	if err != nil && mb != nil {
		if merr := mb.failure(); merr != nil {
			return nil, fmt.Errorf("%w: rule %q: request not sent on: %w", ErrMasking, rule.Name, merr)
		}
	}
	return resp, err
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
