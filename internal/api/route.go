package api

// Over 500 lines: Route and DestinationPolicy with their validation, kept together as the reference for those documents.

import (
	"fmt"
	"regexp"
	"strings"
)

// Kinds for L7 traffic rules.
const (
	// KindRoute routes a service's HTTP requests (what an Istio
	// VirtualService says).
	KindRoute = "Route"
	// KindDestinationPolicy names subsets of a service's endpoints and sets
	// its traffic policy (what an Istio DestinationRule says).
	KindDestinationPolicy = "DestinationPolicy"
)

// Route sends a service's requests to subsets of its endpoints by rules.
type Route struct {
	APIVersion string    `json:"apiVersion,omitempty"`
	Kind       string    `json:"kind,omitempty"`
	Meta       Meta      `json:"metadata"`
	Spec       RouteSpec `json:"spec"`
}

// RouteSpec: the first rule whose match matches a request decides.
type RouteSpec struct {
	// Service is the service (in the route's namespace) whose requests this
	// route decides. One route per service: the newest applied wins
	// (fogmesh apply warns when another route names the service).
	Service string      `json:"service"`
	Rules   []RouteRule `json:"rules"`
	// Unmatched says what happens to a request no rule matches: "" or
	// UnmatchedAny (fogmesh's default) sends it to any endpoint of the
	// service; UnmatchedReject answers it 404, as Istio answers a request
	// no route of a VirtualService matches (so a canary's match rule gets
	// no unmatched users). Routes from Istio documents are UnmatchedReject.
	Unmatched string `json:"unmatched,omitempty"`
}

// Values of RouteSpec.Unmatched.
const (
	UnmatchedAny    = "any"
	UnmatchedReject = "reject"
)

// RouteRule matches requests and splits them over backends.
type RouteRule struct {
	// Name labels the rule's request metrics (route="name"); optional.
	Name string `json:"name,omitempty"`
	// Match: any of these (OR); empty matches every request.
	Match []RouteMatch `json:"match,omitempty"`
	// Backends share the matched requests by weight (default 1 each).
	Backends []RouteBackend `json:"backends"`
	// Class names the traffic class of matched requests (one of the
	// service's classes).
	Class   string       `json:"class,omitempty"`
	Timeout Duration     `json:"timeout,omitempty"` // overrides the service's request timeout
	Retries *RetryPolicy `json:"retries,omitempty"` // overrides the service's retry policy
	// Mirror sends a copy of matched requests elsewhere; see Mirror.
	Mirror *Mirror `json:"mirror,omitempty"`
	// Fault delays or aborts matched requests on purpose; see Fault.
	Fault *Fault `json:"fault,omitempty"`
}

// Mirror sends a copy of a share of requests to a subset of the service or
// to another service of the same namespace, fire and forget: the copy's
// Host gets the suffix "-shadow" (as Istio does), its response is
// discarded, and it never delays or fails the request. A request whose
// body exceeds 64 KiB is not mirrored.
type Mirror struct {
	Subset  string `json:"subset,omitempty"`  // of Service, or of the route's service
	Service string `json:"service,omitempty"` // default: the route's service
	// Percent of matched requests mirrored, 0-100 (default 100).
	Percent *float64 `json:"percent,omitempty"`
}

// Fault injection, to test how clients cope. Delay runs first; then abort.
type Fault struct {
	Delay *FaultDelay `json:"delay,omitempty"`
	Abort *FaultAbort `json:"abort,omitempty"`
}

// FaultDelay holds Percent of requests for FixedDelay before forwarding.
type FaultDelay struct {
	FixedDelay Duration `json:"fixedDelay"`
	Percent    float64  `json:"percent"` // 0-100
}

// FaultAbort answers Percent of requests itself: HTTPStatus, or for gRPC
// requests (content-type application/grpc) GRPCStatus when given (a
// trailers-only response with HTTP 200), else HTTPStatus.
type FaultAbort struct {
	HTTPStatus int     `json:"httpStatus,omitempty"` // 200-599
	GRPCStatus int     `json:"grpcStatus,omitempty"` // 1-16
	Percent    float64 `json:"percent"`              // 0-100
}

// MirrorPercent is the share of requests mirrored, 0-100.
func (m *Mirror) MirrorPercent() float64 {
	if m.Percent == nil {
		return 100
	}
	return *m.Percent
}

// RouteMatch: every field given must match (AND).
type RouteMatch struct {
	Path   *StringMatch `json:"path,omitempty"`
	Host   *StringMatch `json:"host,omitempty"` // the Host header, without port
	Method string       `json:"method,omitempty"`
	// Headers must be present and match; several lines of one header
	// match as their values joined with ",". Names are lower case.
	Headers map[string]StringMatch `json:"headers,omitempty"`
	// WithoutHeaders: the request must have none of these headers with a
	// matching value (an empty StringMatch: none of these headers at all).
	WithoutHeaders map[string]StringMatch `json:"withoutHeaders,omitempty"`
	// QueryParams must be present in the query and match (the first value
	// of a repeated parameter, decoded; "?key" has the value "").
	QueryParams map[string]StringMatch `json:"queryParams,omitempty"`
	// SourceLabels and SourceNamespace match the calling workload. The
	// routing agent is the caller's, which knows a caller only when it is
	// one of its node's workloads, identified by its address (and attest
	// selectors): its namespace is its identity's, and its labels are those
	// every workload of its node with its identity carries. An unknown
	// caller matches neither.
	SourceLabels    map[string]string `json:"sourceLabels,omitempty"`
	SourceNamespace string            `json:"sourceNamespace,omitempty"`
}

// HasSource reports whether m has conditions on the calling workload.
func (m *RouteMatch) HasSource() bool { return len(m.SourceLabels) > 0 || m.SourceNamespace != "" }

// StringMatch is one of exact, prefix or regex (RE2, whole string).
type StringMatch struct {
	Exact  string `json:"exact,omitempty"`
	Prefix string `json:"prefix,omitempty"`
	Regex  string `json:"regex,omitempty"`

	re *regexp.Regexp
}

// RouteBackend is a subset of the service's endpoints ("" = all of them).
type RouteBackend struct {
	Subset string `json:"subset,omitempty"`
	Weight int    `json:"weight,omitempty"`
}

// DestinationPolicy names subsets of a service's endpoints by label and
// sets the service's traffic policy.
type DestinationPolicy struct {
	APIVersion string                `json:"apiVersion,omitempty"`
	Kind       string                `json:"kind,omitempty"`
	Meta       Meta                  `json:"metadata"`
	Spec       DestinationPolicySpec `json:"spec"`
}

// DestinationPolicySpec of one service.
type DestinationPolicySpec struct {
	Service string   `json:"service"`
	Subsets []Subset `json:"subsets,omitempty"`
	// Balancer overrides the service's balancer when set.
	Balancer string `json:"balancer,omitempty"`
	// MinHealthyShare overrides the service's when set.
	MinHealthyShare float64 `json:"minHealthyShare,omitempty"`
	// Locality overrides the service's when set ("tiers" or "none").
	// An Istio DestinationRule sets it: "tiers" only with outlierDetection
	// and localityLbSetting not disabled, as Istio.
	Locality string `json:"locality,omitempty"`
	// HashKey overrides the service's when set (with consistent-hash).
	HashKey *HashKey `json:"hashKey,omitempty"`
	// OutlierDetection and CircuitBreaker override the service's when set.
	OutlierDetection *OutlierDetection `json:"outlierDetection,omitempty"`
	CircuitBreaker   *CircuitBreaker   `json:"circuitBreaker,omitempty"`
	// Ports override the settings above for one service port each
	// (Istio's portLevelSettings): applied after the policy's own, and in
	// a subset's policy after the subset's.
	Ports []PortPolicy `json:"ports,omitempty"`
}

// PortPolicy is a policy's settings for one service port. Its policy has
// no service, subsets or ports.
type PortPolicy struct {
	Port   int                   `json:"port"` // the service port's number
	Policy DestinationPolicySpec `json:"policy"`
}

// Subset is the endpoints whose labels include Labels.
type Subset struct {
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels"`
	// Policy overrides the policy's own settings and its ports' (balancer,
	// hashKey, minHealthyShare, outlierDetection, circuitBreaker: each,
	// when set, replaces the whole) for requests a route sends to this
	// subset (Istio's subsets[].trafficPolicy); its ports apply last. A
	// subset with its own circuitBreaker has its own counters. service
	// and subsets must be empty.
	Policy *DestinationPolicySpec `json:"policy,omitempty"`
}

func (r *Route) GetMeta() *Meta             { return &r.Meta }
func (*Route) GetKind() string              { return KindRoute }
func (p *DestinationPolicy) GetMeta() *Meta { return &p.Meta }
func (*DestinationPolicy) GetKind() string  { return KindDestinationPolicy }

// Validate checks a route and fills defaults.
func (r *Route) Validate() error {
	r.APIVersion, r.Kind = APIVersion, KindRoute
	r.Meta.Namespace = NamespaceOr(r.Meta.Namespace)
	if err := validName("metadata.name", r.Meta.Name); err != nil {
		return err
	}
	if err := validName("metadata.namespace", r.Meta.Namespace); err != nil {
		return err
	}
	if err := validName("spec.service", r.Spec.Service); err != nil {
		return err
	}
	switch r.Spec.Unmatched {
	case "", UnmatchedAny, UnmatchedReject:
	default:
		return fieldErr("spec.unmatched", "%q is not %s or %s", r.Spec.Unmatched, UnmatchedAny, UnmatchedReject)
	}
	if len(r.Spec.Rules) == 0 && r.Spec.Unmatched != UnmatchedReject {
		// Without rules a route either means nothing or, with
		// unmatched: reject, refuses everything (an Istio VirtualService
		// whose every rule was skipped fails closed).
		return fieldErr("spec.rules", "at least one rule is required")
	}
	for i := range r.Spec.Rules {
		rule := &r.Spec.Rules[i]
		f := fmt.Sprintf("spec.rules[%d]", i)
		for j := range rule.Match {
			m := &rule.Match[j]
			mf := fmt.Sprintf("%s.match[%d]", f, j)
			if err := m.Path.compile(mf + ".path"); err != nil {
				return err
			}
			if m.Path != nil && m.Path.Exact == "" && m.Path.Prefix == "" && m.Path.Regex == "" {
				return fieldErr(mf+".path", "one of exact, prefix or regex is required")
			}
			if err := m.Host.compile(mf + ".host"); err != nil {
				return err
			}
			m.Method = strings.ToUpper(m.Method)
			var err error
			if m.Headers, err = compileMatchMap(mf+".headers.", m.Headers, true); err != nil {
				return err
			}
			if m.WithoutHeaders, err = compileMatchMap(mf+".withoutHeaders.", m.WithoutHeaders, true); err != nil {
				return err
			}
			if m.QueryParams, err = compileMatchMap(mf+".queryParams.", m.QueryParams, false); err != nil {
				return err
			}
			for k := range m.SourceLabels {
				if k == "" {
					return fieldErr(mf+".sourceLabels", "an empty label name is not allowed")
				}
			}
			if m.SourceNamespace != "" {
				if err := validName(mf+".sourceNamespace", m.SourceNamespace); err != nil {
					return err
				}
			}
		}
		if len(rule.Backends) == 0 {
			return fieldErr(f+".backends", "at least one backend is required")
		}
		for j := range rule.Backends {
			b := &rule.Backends[j]
			if b.Weight < 0 {
				return fieldErr(fmt.Sprintf("%s.backends[%d].weight", f, j), "must not be negative")
			}
			if b.Subset != "" {
				if err := validName(fmt.Sprintf("%s.backends[%d].subset", f, j), b.Subset); err != nil {
					return err
				}
			}
		}
		if rule.Timeout < 0 {
			return fieldErr(f+".timeout", "must not be negative")
		}
		if err := rule.Retries.validate(f + ".retries"); err != nil {
			return err
		}
		if err := rule.Mirror.validate(f + ".mirror"); err != nil {
			return err
		}
		if err := rule.Fault.validate(f + ".fault"); err != nil {
			return err
		}
	}
	return nil
}

// compileMatchMap compiles each StringMatch of a map, lower-casing the
// names of headers (nil stays nil). :authority is host, the request's
// authority (HTTP/1.1 Host, HTTP/2 :authority, port included); other
// pseudo-headers are refused rather than left to never match.
func compileMatchMap(field string, ms map[string]StringMatch, header bool) (map[string]StringMatch, error) {
	if len(ms) == 0 {
		return nil, nil
	}
	out := make(map[string]StringMatch, len(ms))
	for name, sm := range ms {
		if name == "" {
			return nil, fieldErr(field, "an empty name is not allowed")
		}
		if err := sm.compile(field + name); err != nil {
			return nil, err
		}
		if header {
			name = strings.ToLower(name)
			switch {
			case name == ":authority":
				name = "host" // one header (Envoy's :authority): the request's authority
			case strings.HasPrefix(name, ":"):
				return nil, fieldErr(field+name, "pseudo-header %s is not supported (only :authority, the same as host); match the method and path with method and path", name)
			}
			if _, dup := out[name]; dup {
				return nil, fieldErr(field+name, "host and :authority are one header; give one")
			}
		}
		out[name] = sm
	}
	return out, nil
}

func validPercent(field string, p float64) error {
	if !(p >= 0 && p <= 100) { // also refuses NaN
		return fieldErr(field, "%g is not within 0 and 100", p)
	}
	return nil
}

func (m *Mirror) validate(f string) error {
	if m == nil {
		return nil
	}
	if m.Subset == "" && m.Service == "" {
		return fieldErr(f, "one of subset or service is required")
	}
	if m.Subset != "" {
		if err := validName(f+".subset", m.Subset); err != nil {
			return err
		}
	}
	if m.Service != "" {
		if err := validName(f+".service", m.Service); err != nil {
			return err
		}
	}
	return validPercent(f+".percent", m.MirrorPercent())
}

func (ft *Fault) validate(f string) error {
	if ft == nil {
		return nil
	}
	if ft.Delay == nil && ft.Abort == nil {
		return fieldErr(f, "one of delay or abort is required")
	}
	if d := ft.Delay; d != nil {
		if d.FixedDelay <= 0 {
			return fieldErr(f+".delay.fixedDelay", "must be positive")
		}
		if err := validPercent(f+".delay.percent", d.Percent); err != nil {
			return err
		}
	}
	if ab := ft.Abort; ab != nil {
		if ab.HTTPStatus == 0 && ab.GRPCStatus == 0 {
			return fieldErr(f+".abort", "one of httpStatus or grpcStatus is required")
		}
		if ab.HTTPStatus != 0 && (ab.HTTPStatus < 200 || ab.HTTPStatus > 599) {
			return fieldErr(f+".abort.httpStatus", "%d is not within 200 and 599", ab.HTTPStatus)
		}
		if ab.GRPCStatus < 0 || ab.GRPCStatus > 16 {
			return fieldErr(f+".abort.grpcStatus", "%d is not within 1 and 16", ab.GRPCStatus)
		}
		if err := validPercent(f+".abort.percent", ab.Percent); err != nil {
			return err
		}
	}
	return nil
}

func (m *StringMatch) compile(field string) error {
	if m == nil {
		return nil
	}
	n := 0
	for _, s := range []string{m.Exact, m.Prefix, m.Regex} {
		if s != "" {
			n++
		}
	}
	if n > 1 {
		return fieldErr(field, "give only one of exact, prefix, regex")
	}
	if m.Regex != "" {
		re, err := regexp.Compile("^(?:" + m.Regex + ")$")
		if err != nil {
			return fieldErr(field+".regex", "%v", err)
		}
		m.re = re
	}
	return nil
}

// Matches reports whether s matches. An empty StringMatch matches anything.
func (m *StringMatch) Matches(s string) bool {
	switch {
	case m == nil:
		return true
	case m.Exact != "":
		return s == m.Exact
	case m.Prefix != "":
		return strings.HasPrefix(s, m.Prefix)
	case m.Regex != "":
		if m.re == nil {
			if m.compile("") != nil {
				return false
			}
		}
		return m.re.MatchString(s)
	}
	return true
}

// Validate checks a destination policy and fills defaults.
func (p *DestinationPolicy) Validate() error {
	p.APIVersion, p.Kind = APIVersion, KindDestinationPolicy
	p.Meta.Namespace = NamespaceOr(p.Meta.Namespace)
	if err := validName("metadata.name", p.Meta.Name); err != nil {
		return err
	}
	if err := validName("metadata.namespace", p.Meta.Namespace); err != nil {
		return err
	}
	if err := validName("spec.service", p.Spec.Service); err != nil {
		return err
	}
	seen := map[string]bool{}
	for i, s := range p.Spec.Subsets {
		f := fmt.Sprintf("spec.subsets[%d]", i)
		if err := validName(f+".name", s.Name); err != nil {
			return err
		}
		if seen[s.Name] {
			return fieldErr(f+".name", "duplicate subset %q", s.Name)
		}
		seen[s.Name] = true
		if len(s.Labels) == 0 {
			return fieldErr(f+".labels", "at least one label is required")
		}
		if sp := s.Policy; sp != nil {
			if sp.Service != "" {
				return fieldErr(f+".policy.service", "not allowed in a subset's policy")
			}
			if len(sp.Subsets) > 0 {
				return fieldErr(f+".policy.subsets", "not allowed in a subset's policy")
			}
			if err := sp.validateOverrides(f + ".policy"); err != nil {
				return err
			}
		}
	}
	return p.Spec.validateOverrides("spec")
}

// validateOverrides checks the settings a policy (or a subset's, or a
// port's) overrides.
func (s *DestinationPolicySpec) validateOverrides(f string) error {
	seen := map[int]bool{}
	for i := range s.Ports {
		pp := &s.Ports[i]
		pf := fmt.Sprintf("%s.ports[%d]", f, i)
		if err := validPort(pf+".port", pp.Port); err != nil {
			return err
		}
		if seen[pp.Port] {
			return fieldErr(pf+".port", "duplicate port %d", pp.Port)
		}
		seen[pp.Port] = true
		if pp.Policy.Service != "" || len(pp.Policy.Subsets) > 0 || len(pp.Policy.Ports) > 0 {
			return fieldErr(pf+".policy", "service, subsets and ports are not allowed in a port's policy")
		}
		if err := pp.Policy.validateOverrides(pf + ".policy"); err != nil {
			return err
		}
	}
	switch s.Balancer {
	case "", "edge-aware", "round-robin", "least-conn", "random", "consistent-hash", "maglev":
	default:
		return fieldErr(f+".balancer", "%q is not one of edge-aware, round-robin, least-conn, random, consistent-hash, maglev", s.Balancer)
	}
	if s.MinHealthyShare < 0 || s.MinHealthyShare > 1 {
		return fieldErr(f+".minHealthyShare", "%g is not within 0 and 1", s.MinHealthyShare)
	}
	switch s.Locality {
	case "", LocalityTiers, LocalityNone:
	default:
		return fieldErr(f+".locality", "%q is not one of tiers, none", s.Locality)
	}
	if od := s.OutlierDetection; od != nil {
		if err := od.validate(f + ".outlierDetection"); err != nil {
			return err
		}
	}
	if cb := s.CircuitBreaker; cb != nil {
		if err := cb.validate(f + ".circuitBreaker"); err != nil {
			return err
		}
	}
	return nil
}
