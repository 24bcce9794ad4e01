package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

// The Istio adapter: networking.istio.io VirtualService and DestinationRule
// documents become fogmesh Routes and DestinationPolicies (security.istio.io
// AuthorizationPolicy and PeerAuthentication: istio_security.go). Fields that map
// are translated; every other field is reported in a warning that names it
// (and is ignored), never dropped silently. Istio's types are not imported:
// the documents are walked as JSON, which keeps istio.io/api out of the
// binaries.

var istioAPIVersions = map[string]bool{
	"networking.istio.io/v1": true, "networking.istio.io/v1beta1": true, "networking.istio.io/v1alpha3": true,
	"security.istio.io/v1": true, "security.istio.io/v1beta1": true,
}

func isIstio(r json.RawMessage) bool {
	var h struct {
		APIVersion string `json:"apiVersion"`
	}
	return json.Unmarshal(r, &h) == nil && istioAPIVersions[h.APIVersion]
}

// walker takes known fields out of a JSON object and reports the rest.
type walker struct {
	warnings []string
	opts     DecodeOptions
	// outlierAbove: the policy being translated is a subset's and the
	// DestinationRule's top level has outlierDetection, which it inherits.
	outlierAbove bool
}

func (w *walker) leftovers(path string, m map[string]any) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		w.warnings = append(w.warnings, fmt.Sprintf("%s.%s is not supported and is ignored", path, k))
	}
}

func take[T any](m map[string]any, key string) (T, bool) {
	var zero T
	v, ok := m[key]
	if !ok {
		return zero, false
	}
	delete(m, key)
	t, ok := v.(T)
	return t, ok
}

func obj(v any) map[string]any {
	m, _ := v.(map[string]any)
	return m
}

func decodeIstio(r json.RawMessage, opts DecodeOptions) ([]Object, []string, error) {
	var doc map[string]any
	if err := json.Unmarshal(r, &doc); err != nil {
		return nil, nil, fmt.Errorf("json: %w", err)
	}
	kind, _ := take[string](doc, "kind")
	apiVersion, _ := take[string](doc, "apiVersion")
	security := strings.HasPrefix(apiVersion, "security.istio.io/")
	meta := obj(doc["metadata"])
	delete(doc, "metadata")
	name, _ := take[string](meta, "name")
	ns, _ := take[string](meta, "namespace")
	ns = NamespaceOr(ns)
	spec := obj(doc["spec"])
	delete(doc, "spec")
	if spec == nil {
		return nil, nil, fieldErr("spec", "required")
	}
	w := &walker{opts: opts}
	delete(meta, "labels")
	delete(meta, "annotations")
	w.leftovers("metadata", meta)
	w.leftovers("", doc)
	var objs []Object
	var err error
	switch {
	case security && kind == "AuthorizationPolicy":
		objs, err = w.authorizationPolicy(name, ns, spec)
	case security && kind == "PeerAuthentication":
		err = w.peerAuthentication(spec)
	case security:
		return nil, nil, fieldErr("kind", "%q: only AuthorizationPolicy and PeerAuthentication are supported from security.istio.io", kind)
	case kind == "VirtualService":
		objs, err = w.virtualService(name, ns, spec)
	case kind == "DestinationRule":
		objs, err = w.destinationRule(name, ns, spec)
	default:
		return nil, nil, fieldErr("kind", "%q: only VirtualService and DestinationRule are supported from networking.istio.io", kind)
	}
	if err != nil {
		return nil, nil, err
	}
	for _, o := range objs {
		if err := o.Validate(); err != nil {
			return nil, nil, fmt.Errorf("translated %s: %w", o.GetKind(), err)
		}
	}
	return objs, w.warnings, nil
}

// istioHost turns "reviews", "reviews.shop", "reviews.shop.svc.cluster.local"
// or "reviews.shop.mesh" into a service and namespace.
func istioHost(field, host, ns string) (string, string, error) {
	if strings.Contains(host, "*") {
		return "", "", fieldErr(field, "wildcard host %q is not supported", host)
	}
	parts := strings.Split(strings.TrimSuffix(host, "."), ".")
	switch {
	case len(parts) == 1:
		return parts[0], ns, nil
	case len(parts) == 2, len(parts) == 3 && parts[2] == "mesh",
		len(parts) >= 3 && parts[2] == "svc":
		return parts[0], parts[1], nil
	}
	return "", "", fieldErr(field, "host %q is not a mesh service (want name, name.namespace or name.namespace.svc.cluster.local)", host)
}

func (w *walker) virtualService(name, ns string, spec map[string]any) ([]Object, error) {
	hosts, _ := take[[]any](spec, "hosts")
	if len(hosts) == 0 {
		return nil, fieldErr("spec.hosts", "at least one host is required")
	}
	https, _ := take[[]any](spec, "http")
	if gws, ok := take[[]any](spec, "gateways"); ok && len(gws) > 0 {
		// Istio: a VirtualService bound to gateways applies to mesh
		// (sidecar) traffic only if the list names "mesh". fogmesh has no
		// gateways, so one without "mesh" applies to nothing here.
		if !containsString(gws, "mesh") {
			w.warnf("spec.gateways %v does not include mesh: the VirtualService applies to gateways only and is skipped (fogmesh routes mesh traffic only; a route applied earlier under this name stays until deleted: fogmesh delete route %s -n %s)", gws, name, ns)
			delete(spec, "tcp")
			delete(spec, "tls")
			delete(spec, "exportTo")
			w.leftovers("spec", spec)
			return nil, nil
		}
		if len(gws) > 1 {
			w.warnf("spec.gateways: only mesh applies in fogmesh; the gateways are ignored")
		}
	}
	for _, k := range []string{"tcp", "tls"} {
		if _, ok := spec[k]; ok {
			w.warnings = append(w.warnings, fmt.Sprintf("spec.%s routes are not supported (only http) and are ignored", k))
			delete(spec, k)
		}
	}
	w.leftovers("spec", spec)
	if len(https) == 0 {
		// Nothing for HTTP: Istio routes the hosts' HTTP requests by its
		// defaults, as fogmesh does without a route.
		w.warnf("spec.http is empty: the VirtualService has no HTTP routes and is skipped (a route applied earlier under this name stays until deleted: fogmesh delete route %s -n %s)", name, ns)
		return nil, nil
	}
	var objs []Object
	for hi, h := range hosts {
		hs, _ := h.(string)
		svc, svcNS, err := istioHost(fmt.Sprintf("spec.hosts[%d]", hi), hs, ns)
		if err != nil {
			return nil, err
		}
		rname := name
		if len(hosts) > 1 {
			rname = name + "-" + svc
		}
		// Istio answers a request no http route matches 404 ("no route").
		rt := &Route{Meta: Meta{Name: rname, Namespace: svcNS}, Spec: RouteSpec{Service: svc, Unmatched: UnmatchedReject}}
		for i, hr := range https {
			path := fmt.Sprintf("spec.http[%d]", i)
			rule, skip, err := w.httpRoute(path, obj(hr), svc, svcNS, ns, hi == 0)
			if err != nil {
				return nil, err
			}
			if skip {
				if hi == 0 {
					w.warnf("%s is skipped: none of its matches can be evaluated by fogmesh, and dropping the condition would widen the rule", path)
				}
				continue
			}
			rt.Spec.Rules = append(rt.Spec.Rules, rule)
		}
		if len(rt.Spec.Rules) == 0 && hi == 0 {
			w.warnf("no http route is left: every request to %s is answered 404 (no route)", hs)
		}
		objs = append(objs, rt)
	}
	return objs, nil
}

// containsString reports whether the JSON list l holds s.
func containsString(l []any, s string) bool {
	for _, v := range l {
		if v == s {
			return true
		}
	}
	return false
}

// httpRoute translates one http route; warn only once (for the first host).
// skip is true when the route has matches and none of them can be
// evaluated (the rule is then left out, never widened).
func (w *walker) httpRoute(path string, hr map[string]any, svc, svcNS, docNS string, warn bool) (rule RouteRule, skip bool, err error) {
	if hr == nil {
		return rule, false, fieldErr(path, "must be an object")
	}
	hr = cloneMap(hr)
	rule.Name, _ = take[string](hr, "name")
	matches, _ := take[[]any](hr, "match")
	for j, m := range matches {
		mp := fmt.Sprintf("%s.match[%d]", path, j)
		rm, ok, err := w.istioMatch(mp, cloneMap(obj(m)), warn)
		if err != nil {
			return rule, false, err
		}
		if ok {
			rule.Match = append(rule.Match, rm)
		}
	}
	if len(matches) > 0 && len(rule.Match) == 0 {
		return rule, true, nil
	}
	rule, err = w.httpRouteAction(path, hr, rule, svc, svcNS, docNS, warn)
	return rule, false, err
}

// istioMatchSkipped are HTTPMatchRequest fields fogmesh cannot evaluate:
// a match using one is left out (a request that only it would match
// matches a later rule or none), since ignoring the field would widen it.
var istioMatchSkipped = map[string]string{
	"port":          "port matches are not supported (a route applies to every port of its service)",
	"ignoreUriCase": "case-insensitive URI matches are not supported",
	"scheme":        "scheme matches are not supported",
}

// istioMatch translates one HTTPMatchRequest. ok is false when the match
// uses a field fogmesh cannot evaluate (warned; see istioMatchSkipped).
func (w *walker) istioMatch(mp string, mm map[string]any, warn bool) (rm RouteMatch, ok bool, err error) {
	warnf := func(format string, args ...any) {
		if warn {
			w.warnf(format, args...)
		}
	}
	if mm == nil {
		return rm, false, fieldErr(mp, "must be an object")
	}
	if rm.Path, err = stringMatch(mp+".uri", obj(mm["uri"])); err != nil {
		return rm, false, err
	}
	delete(mm, "uri")
	if rm.Host, err = stringMatch(mp+".authority", obj(mm["authority"])); err != nil {
		return rm, false, err
	}
	delete(mm, "authority")
	if mt, _ := stringMatch(mp+".method", obj(mm["method"])); mt != nil {
		if mt.Exact == "" {
			return rm, false, fieldErr(mp+".method", "only exact method matches are supported")
		}
		rm.Method = mt.Exact
		if mt.Exact != strings.ToUpper(mt.Exact) {
			// Istio is case-sensitive and refuses such requests: the match
			// matches nothing, where fogmesh would upper-case it.
			warnf("%s is skipped: method %q is not upper case and matches no request", mp, mt.Exact)
			return rm, false, nil
		}
	}
	delete(mm, "method")
	for _, f := range []struct {
		key string
		dst *map[string]StringMatch
	}{{"headers", &rm.Headers}, {"withoutHeaders", &rm.WithoutHeaders}, {"queryParams", &rm.QueryParams}} {
		hs := obj(mm[f.key])
		delete(mm, f.key)
		for _, hn := range sortedKeys(hs) {
			hv := obj(hs[hn])
			sm, err := stringMatch(mp+"."+f.key+"."+hn, hv)
			if err != nil {
				return rm, false, err
			}
			if sm == nil {
				sm = &StringMatch{} // presence
			}
			if e, ok := hv["exact"]; ok && e == "" {
				// Istio: {exact: ""} matches an empty value ("?key", or
				// "X: "); fogmesh's empty StringMatch matches any value.
				sm = &StringMatch{Regex: "^$"}
			}
			if *f.dst == nil {
				*f.dst = map[string]StringMatch{}
			}
			(*f.dst)[hn] = *sm
		}
	}
	if sl, present := mm["sourceLabels"]; present {
		slm, ok := sl.(map[string]any)
		if !ok {
			return rm, false, fieldErr(mp+".sourceLabels", "must be a map of labels")
		}
		delete(mm, "sourceLabels")
		rm.SourceLabels = map[string]string{}
		for k, v := range slm {
			vs, ok := v.(string)
			if !ok {
				return rm, false, fieldErr(mp+".sourceLabels."+k, "must be a string")
			}
			rm.SourceLabels[k] = vs
		}
	}
	if sn, present := mm["sourceNamespace"]; present {
		sns, ok := sn.(string)
		if !ok || sns == "" {
			return rm, false, fieldErr(mp+".sourceNamespace", "must be a namespace name")
		}
		delete(mm, "sourceNamespace")
		rm.SourceNamespace = sns
	}
	delete(mm, "name")
	if gws, present := take[[]any](mm, "gateways"); present && !containsString(gws, "mesh") {
		warnf("%s is skipped: its gateways %v do not include mesh", mp, gws)
		return rm, false, nil
	}
	if _, present := take[string](mm, "statPrefix"); present {
		warnf("%s.statPrefix is not supported and is ignored (it only names statistics)", mp)
	}
	skipped := false
	if v, present := mm["ignoreUriCase"]; present && v == false {
		delete(mm, "ignoreUriCase")
	}
	for _, k := range sortedKeys(mm) {
		why, known := istioMatchSkipped[k]
		if !known {
			why = "the field is not supported"
		}
		warnf("%s is skipped: %s.%s: %s, and ignoring it would widen the rule", mp, mp, k, why)
		skipped = true
	}
	return rm, !skipped, nil
}

// httpRouteAction translates what an http route does with the requests
// it matches: destinations, timeout, retries, mirror and fault.
func (w *walker) httpRouteAction(path string, hr map[string]any, rule RouteRule, svc, svcNS, docNS string, warn bool) (RouteRule, error) {
	routes, _ := take[[]any](hr, "route")
	if len(routes) == 0 {
		return rule, fieldErr(path+".route", "at least one destination is required (redirects and direct responses are not supported)")
	}
	// Istio: when any destination has a weight, one without has weight 0
	// (a single destination gets everything whatever its weight).
	weighted := false
	for _, d := range routes {
		if _, ok := obj(d)["weight"]; ok {
			weighted = true
		}
	}
	if !weighted && len(routes) > 1 && warn {
		w.warnf("%s.route: no destination has a weight: fogmesh splits requests equally between them", path)
	}
	for j, d := range routes {
		dp := fmt.Sprintf("%s.route[%d]", path, j)
		dm := cloneMap(obj(d))
		dest := cloneMap(obj(dm["destination"]))
		delete(dm, "destination")
		host, _ := take[string](dest, "host")
		dsvc, dns, err := istioHost(dp+".destination.host", host, docNS)
		if err != nil {
			return rule, err
		}
		if dsvc != svc || dns != svcNS {
			return rule, fieldErr(dp+".destination.host", "%q: routing to another service than the route's host is not supported yet", host)
		}
		subset, _ := take[string](dest, "subset")
		delete(dest, "port") // one service port per listener: the port is implied
		weight := 1
		if weighted {
			weight = 0
		}
		if wv, ok := take[float64](dm, "weight"); ok {
			weight = int(wv)
		}
		if warn {
			w.leftovers(dp+".destination", dest)
			w.leftovers(dp, dm)
		}
		rule.Backends = append(rule.Backends, RouteBackend{Subset: subset, Weight: weight})
	}
	if t, ok := take[string](hr, "timeout"); ok {
		d, err := time.ParseDuration(t)
		if err != nil {
			return rule, fieldErr(path+".timeout", "%v", err)
		}
		rule.Timeout = Duration(d)
	}
	rp, err := w.istioRetries(path, hr, warn)
	if err != nil {
		return rule, err
	}
	rule.Retries = rp
	if err := w.istioMirror(path, hr, &rule, svc, svcNS, docNS, warn); err != nil {
		return rule, err
	}
	if fm := cloneMap(obj(hr["fault"])); fm != nil {
		delete(hr, "fault")
		f, err := w.istioFault(path+".fault", fm, warn)
		if err != nil {
			return rule, err
		}
		rule.Fault = f
	}
	if warn {
		w.leftovers(path, hr)
	}
	return rule, nil
}

// IstioDefaultRetryOn is the retryOn of Istio's default retry policy (a
// route without retries, or with attempts and no retryOn): connect
// failures, refused streams, gRPC UNAVAILABLE and CANCELLED, and 503
// (DefaultPolicy in Istio's pilot/pkg/networking/core/route/retry).
const IstioDefaultRetryOn = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes,503"

// istioRetries translates an http route's retries (Istio's HTTPRetry) as
// Istio's retry.ConvertPolicy does: no block is Istio's default policy (2
// retries on IstioDefaultRetryOn); attempts 0 or absent disables retries;
// retryOn replaces the default conditions and codes (bare status codes
// in it are retriable status codes). Envoy retries whatever the method,
// so the policy's Methods is "any".
func (w *walker) istioRetries(path string, hr map[string]any, warn bool) (*RetryPolicy, error) {
	raw, present := hr["retries"]
	if !present || raw == nil {
		return &RetryPolicy{Attempts: 2, On: IstioDefaultRetryOn, Methods: RetryMethodsAny}, nil
	}
	delete(hr, "retries")
	path += ".retries"
	rm := cloneMap(obj(raw))
	if rm == nil {
		return nil, fieldErr(path, "must be an object")
	}
	rp := &RetryPolicy{On: IstioDefaultRetryOn, Methods: RetryMethodsAny}
	attempts := 0
	if v, ok := rm["attempts"]; ok {
		a, ok := take[float64](rm, "attempts")
		if !ok || a != float64(int(a)) || a < 0 {
			return nil, fieldErr(path+".attempts", "%v is not a whole number of 0 or more", v)
		}
		attempts = int(a)
	}
	if v, ok := rm["retryOn"]; ok {
		on, ok := take[string](rm, "retryOn")
		if !ok {
			return nil, fieldErr(path+".retryOn", "%v is not a string", v)
		}
		if err := validRetryOn(path+".retryOn", on); err != nil {
			return nil, err
		}
		if strings.TrimSpace(on) != "" {
			rp.On = on
		}
		for _, tok := range strings.Split(on, ",") {
			switch tok = strings.TrimSpace(tok); tok {
			case "retriable-headers":
				if warn {
					w.warnf("%s.retryOn %q never matches: Istio has no field for the retriable header names", path, tok)
				}
			case "http3-post-connect-failure":
				if warn {
					w.warnf("%s.retryOn %q never matches: fogmesh does not speak HTTP/3 to endpoints", path, tok)
				}
			}
		}
	}
	if v, ok := rm["perTryTimeout"]; ok {
		t, ok := take[string](rm, "perTryTimeout")
		d, err := time.ParseDuration(t)
		if !ok || err != nil || d < time.Millisecond {
			return nil, fieldErr(path+".perTryTimeout", "%v is not a duration of 1ms or more", v)
		}
		rp.PerTryTimeout = Duration(d)
	}
	if v, ok := take[bool](rm, "retryRemoteLocalities"); ok && v && warn {
		w.warnf("%s.retryRemoteLocalities is not supported: a retry goes to the nearest endpoint not yet tried, whatever its locality", path)
	}
	if warn {
		w.leftovers(path, rm)
	}
	switch {
	case attempts == 0:
		rp.Attempts = -1 // Istio: no attempts disables retries
	case attempts > 5:
		if warn {
			w.warnf("%s.attempts %d: fogmesh retries at most 5 times", path, attempts)
		}
		rp.Attempts = 5
	default:
		rp.Attempts = attempts
	}
	if err := rp.validate(path); err != nil {
		return nil, err
	}
	return rp, nil
}

// istioPercentage reads {value: 12.5}, Istio's Percent message.
func istioPercentage(m map[string]any, key string) (*float64, bool) {
	pm := cloneMap(obj(m[key]))
	if pm == nil {
		return nil, false
	}
	delete(m, key)
	v, ok := take[float64](pm, "value")
	if !ok {
		v = 0 // an empty Percent is 0%
	}
	return &v, true
}

// istioMirror maps mirror, mirrorPercentage (or the legacy mirrorPercent)
// and the first of mirrors.
func (w *walker) istioMirror(path string, hr map[string]any, rule *RouteRule, svc, svcNS, docNS string, warn bool) error {
	dest, dpath := cloneMap(obj(hr["mirror"])), path+".mirror"
	delete(hr, "mirror")
	pct, _ := istioPercentage(hr, "mirrorPercentage")
	if v, ok := take[float64](hr, "mirrorPercent"); ok && pct == nil {
		pct = &v
	}
	if ms, ok := take[[]any](hr, "mirrors"); ok && len(ms) > 0 {
		if dest != nil {
			return fieldErr(path+".mirrors", "give mirror or mirrors, not both")
		}
		if len(ms) > 1 && warn {
			w.warnings = append(w.warnings, fmt.Sprintf("%s.mirrors[1:] are not supported (one mirror per rule) and are ignored", path))
		}
		m0 := cloneMap(obj(ms[0]))
		dest, dpath = cloneMap(obj(m0["destination"])), path+".mirrors[0].destination"
		delete(m0, "destination")
		if p, ok := istioPercentage(m0, "percentage"); ok {
			pct = p
		}
		if warn {
			w.leftovers(path+".mirrors[0]", m0)
		}
	}
	if dest == nil {
		return nil
	}
	host, _ := take[string](dest, "host")
	msvc, mns, err := istioHost(dpath+".host", host, docNS)
	if err != nil {
		return err
	}
	if mns != svcNS {
		return fieldErr(dpath+".host", "%q: mirroring to another namespace is not supported", host)
	}
	m := &Mirror{Percent: pct}
	if msvc != svc {
		m.Service = msvc
	}
	m.Subset, _ = take[string](dest, "subset")
	if m.Service == "" && m.Subset == "" {
		// Mirroring a service to itself: its endpoints get every request twice.
		m.Service = msvc
	}
	delete(dest, "port")
	if warn {
		w.leftovers(dpath, dest)
	}
	rule.Mirror = m
	return nil
}

// grpcCodes are gRPC status names (Istio writes grpcStatus by name).
var grpcCodes = map[string]int{"OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4,
	"NOT_FOUND": 5, "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9,
	"ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14, "DATA_LOSS": 15, "UNAUTHENTICATED": 16}

// istioFault maps http[].fault: delay.fixedDelay, abort.httpStatus,
// abort.grpcStatus and their percentage (or the legacy integer percent).
func (w *walker) istioFault(path string, fm map[string]any, warn bool) (*Fault, error) {
	f := &Fault{}
	pct := func(m map[string]any) float64 {
		if p, ok := istioPercentage(m, "percentage"); ok {
			delete(m, "percent")
			return *p
		}
		if v, ok := take[float64](m, "percent"); ok {
			return v
		}
		return 100 // Istio: no percentage means every request
	}
	if dm := cloneMap(obj(fm["delay"])); dm != nil {
		delete(fm, "delay")
		fd := &FaultDelay{Percent: pct(dm)}
		if v, ok := take[string](dm, "fixedDelay"); ok {
			d, err := time.ParseDuration(v)
			if err != nil {
				return nil, fieldErr(path+".delay.fixedDelay", "%v", err)
			}
			fd.FixedDelay = Duration(d)
		}
		if warn {
			w.leftovers(path+".delay", dm)
		}
		f.Delay = fd
	}
	if am := cloneMap(obj(fm["abort"])); am != nil {
		delete(fm, "abort")
		fa := &FaultAbort{Percent: pct(am)}
		if v, ok := take[float64](am, "httpStatus"); ok {
			fa.HTTPStatus = int(v)
		}
		if v, ok := am["grpcStatus"]; ok {
			delete(am, "grpcStatus")
			switch v := v.(type) {
			case string:
				code, known := grpcCodes[strings.ToUpper(v)]
				if !known {
					return nil, fieldErr(path+".abort.grpcStatus", "%q is not a gRPC status name", v)
				}
				fa.GRPCStatus = code
			case float64:
				fa.GRPCStatus = int(v)
			}
		}
		if warn {
			w.leftovers(path+".abort", am)
		}
		f.Abort = fa
	}
	if warn {
		w.leftovers(path, fm)
	}
	return f, nil
}

func stringMatch(field string, m map[string]any) (*StringMatch, error) {
	if m == nil {
		return nil, nil
	}
	sm := &StringMatch{}
	for k, v := range m {
		s, ok := v.(string)
		if !ok {
			return nil, fieldErr(field+"."+k, "must be a string")
		}
		switch k {
		case "exact":
			sm.Exact = s
		case "prefix":
			sm.Prefix = s
		case "regex":
			sm.Regex = s
		default:
			return nil, fieldErr(field+"."+k, "is not one of exact, prefix, regex")
		}
	}
	return sm, nil
}

func cloneMap(m map[string]any) map[string]any {
	if m == nil {
		return nil
	}
	c := make(map[string]any, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

var istioLB = map[string]string{
	"UNSPECIFIED": "edge-aware", "ROUND_ROBIN": "round-robin", "LEAST_REQUEST": "least-conn",
	"LEAST_CONN": "least-conn", "RANDOM": "random",
}

// localityLB applies loadBalancer.localityLbSetting: enabled false turns
// locality off; distribute, failover and failoverPriority, which fogmesh
// does not implement, are warned and ignored (its tiers are node > site >
// region > any, failing over to the next tier).
func (w *walker) localityLB(p *DestinationPolicy, loc map[string]any, outlier bool) {
	const path = "spec.trafficPolicy.loadBalancer.localityLbSetting"
	en, ok := take[bool](loc, "enabled")
	switch {
	case ok && !en:
		p.Spec.Locality = LocalityNone
	case outlier || w.outlierAbove:
		p.Spec.Locality = LocalityTiers
	default:
		w.warnings = append(w.warnings, path+" has no effect without outlierDetection (as in Istio): every healthy endpoint shares the load")
	}
	for _, f := range []string{"distribute", "failover", "failoverPriority"} {
		if _, ok := loc[f]; ok {
			delete(loc, f)
			w.warnings = append(w.warnings, fmt.Sprintf("%s.%s is ignored: fogmesh prefers the nearest tier (node > site > region > any) and fails over to the next", path, f))
		}
	}
	w.leftovers(path, loc)
}

func (w *walker) destinationRule(name, ns string, spec map[string]any) ([]Object, error) {
	host, _ := take[string](spec, "host")
	svc, svcNS, err := istioHost("spec.host", host, ns)
	if err != nil {
		return nil, err
	}
	p := &DestinationPolicy{Meta: Meta{Name: name, Namespace: svcNS}, Spec: DestinationPolicySpec{Service: svc}}
	// Istio ejects nothing for errors unless the rule has outlierDetection
	// (issue 11: an always-500 endpoint was ejected after 5 errors).
	p.Spec.OutlierDetection = &OutlierDetection{ConsecutiveErrors: -1, ConnectFailure: ConnectFailureCount}
	// What decides locality at each level, read before the levels are
	// translated (subsetPolicies merges them as Istio does).
	topRaw := rawLocality(obj(spec["trafficPolicy"]))
	portRaw := map[int]localityRaw{}
	for _, e := range func() []any { pls, _ := obj(spec["trafficPolicy"])["portLevelSettings"].([]any); return pls }() {
		if n, ok := obj(obj(e)["port"])["number"].(float64); ok {
			portRaw[int(n)] = rawLocality(obj(e))
		}
	}
	var subRaw []localityRaw
	subsets, _ := take[[]any](spec, "subsets")
	for i, s := range subsets {
		sm := cloneMap(obj(s))
		sp := fmt.Sprintf("spec.subsets[%d]", i)
		sname, _ := take[string](sm, "name")
		labels := map[string]string{}
		for k, v := range obj(sm["labels"]) {
			labels[k] = fmt.Sprint(v)
		}
		delete(sm, "labels")
		sub := Subset{Name: sname, Labels: labels}
		subRaw = append(subRaw, rawLocality(obj(sm["trafficPolicy"])))
		if stp := obj(sm["trafficPolicy"]); stp != nil {
			delete(sm, "trafficPolicy")
			if sub.Policy, err = w.nestedPolicy(name, ns, host, sp+".trafficPolicy", stp, true, topRaw.od); err != nil {
				return nil, err
			}
		}
		w.leftovers(sp, sm)
		p.Spec.Subsets = append(p.Spec.Subsets, sub)
	}
	// Istio prefers the nearest locality only when outlier detection is
	// configured (and localityLbSetting does not disable it): without it,
	// every healthy endpoint shares the load (issue 11, item 3).
	p.Spec.Locality = LocalityNone
	if tp := cloneMap(obj(spec["trafficPolicy"])); tp != nil {
		delete(spec, "trafficPolicy")
		if tp["outlierDetection"] != nil {
			p.Spec.Locality = LocalityTiers
		}
		if lb := cloneMap(obj(tp["loadBalancer"])); lb != nil {
			delete(tp, "loadBalancer")
			if simple, ok := take[string](lb, "simple"); ok {
				b, known := istioLB[simple]
				if !known {
					return nil, fieldErr("spec.trafficPolicy.loadBalancer.simple", "%q is not supported (ROUND_ROBIN, LEAST_REQUEST, LEAST_CONN, RANDOM)", simple)
				}
				p.Spec.Balancer = b
			}
			if ch := cloneMap(obj(lb["consistentHash"])); ch != nil {
				delete(lb, "consistentHash")
				hk := &HashKey{}
				if h, ok := take[string](ch, "httpHeaderName"); ok {
					hk.Header = h
				}
				if c := cloneMap(obj(ch["httpCookie"])); c != nil {
					delete(ch, "httpCookie")
					hk.Cookie, _ = take[string](c, "name")
					w.leftovers("spec.trafficPolicy.loadBalancer.consistentHash.httpCookie", c)
				}
				if v, ok := take[bool](ch, "useSourceIp"); ok {
					hk.SourceIP = v
				}
				balancer := "consistent-hash"
				if mg := cloneMap(obj(ch["maglev"])); mg != nil {
					delete(ch, "maglev")
					balancer = "maglev"
					if ts, ok := take[float64](mg, "tableSize"); ok && ts != maglevTableSize {
						w.warnings = append(w.warnings, fmt.Sprintf("spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize %g is ignored: fogmesh's table has %d entries", ts, maglevTableSize))
					}
					w.leftovers("spec.trafficPolicy.loadBalancer.consistentHash.maglev", mg)
				}
				if rh := cloneMap(obj(ch["ringHash"])); rh != nil {
					delete(ch, "ringHash") // rendezvous hashing: the ring size is ignored (and warned)
					w.leftovers("spec.trafficPolicy.loadBalancer.consistentHash.ringHash", rh)
				}
				w.leftovers("spec.trafficPolicy.loadBalancer.consistentHash", ch)
				p.Spec.Balancer, p.Spec.HashKey = balancer, hk
			}
			if loc := cloneMap(obj(lb["localityLbSetting"])); loc != nil {
				delete(lb, "localityLbSetting")
				w.localityLB(p, loc, tp["outlierDetection"] != nil)
			}
			w.leftovers("spec.trafficPolicy.loadBalancer", lb)
		}
		if od := cloneMap(obj(tp["outlierDetection"])); od != nil {
			delete(tp, "outlierDetection")
			o, err := w.outlierDetection(od)
			if err != nil {
				return nil, err
			}
			p.Spec.OutlierDetection = o
		}
		if cp := cloneMap(obj(tp["connectionPool"])); cp != nil {
			delete(tp, "connectionPool")
			cb := &CircuitBreaker{}
			if err := w.connectionPool(cp, cb); err != nil {
				return nil, err
			}
			w.leftovers("spec.trafficPolicy.connectionPool", cp)
			p.Spec.CircuitBreaker = cb
		}
		if pls, ok := tp["portLevelSettings"].([]any); ok {
			delete(tp, "portLevelSettings")
			for i, e := range pls {
				path := fmt.Sprintf("spec.trafficPolicy.portLevelSettings[%d]", i)
				em := cloneMap(obj(e))
				port := cloneMap(obj(em["port"]))
				num, _ := take[float64](port, "number")
				if num < 1 || num > 65535 || num != float64(int(num)) {
					return nil, fieldErr(path+".port.number", "a port number is required")
				}
				delete(em, "port")
				w.leftovers(path+".port", port)
				if _, ok := em["portLevelSettings"]; ok {
					delete(em, "portLevelSettings")
					w.leftovers(path, map[string]any{"portLevelSettings": nil})
				}
				pp, err := w.nestedPolicy(name, ns, host, path, em, false, false)
				if err != nil {
					return nil, err
				}
				p.Spec.Ports = append(p.Spec.Ports, PortPolicy{Port: int(num), Policy: *pp})
			}
		}
		w.leftovers("spec.trafficPolicy", tp)
	}
	subsetPolicies(p, topRaw, portRaw, subRaw)
	w.leftovers("spec", spec)
	return []Object{p}, nil
}

// outlierDetection translates a DestinationRule's
// trafficPolicy.outlierDetection with Istio's defaults, as Istio hands it
// to Envoy (pilot's applyOutlierDetection): consecutive5xxErrors defaults
// to 5 and 0 turns it off; consecutiveGatewayErrors is off unless set; the
// deprecated consecutiveErrors counts gateway errors only; interval 10s,
// baseEjectionTime 30s, Envoy's max_ejection_time 300s; maxEjectionPercent
// 10 (0 means the default); minHealthPercent 0 (off);
// consecutiveLocalOriginFailures 5 (0 means the default), counted only with
// splitExternalLocalOriginErrors. A failed connect only counts as an error
// (no fogmesh quarantine).
func (w *walker) outlierDetection(od map[string]any) (*OutlierDetection, error) {
	const f = "spec.trafficPolicy.outlierDetection"
	o := &OutlierDetection{ConsecutiveErrors: 5, Interval: Duration(10 * time.Second), BaseEjectionTime: Duration(30 * time.Second),
		MaxEjectionTime: Duration(300 * time.Second), MaxEjectedPercent: 10, ConnectFailure: ConnectFailureCount}
	count := func(key string) (int, bool, error) {
		v, ok := od[key]
		if !ok {
			return 0, false, nil
		}
		delete(od, key)
		n, isNum := v.(float64)
		if !isNum || n < 0 || n != float64(int64(n)) || n > 1<<31 {
			return 0, false, fieldErr(f+"."+key, "%v is not a whole number of at least 0", v)
		}
		return int(n), true, nil
	}
	off := func(n int) int { // Istio: 0 turns a counter off
		if n == 0 {
			return -1
		}
		return n
	}
	if n, ok, err := count("consecutiveErrors"); err != nil {
		return nil, err
	} else if ok && n > 0 {
		// Deprecated: Istio maps it to gateway errors only (istio/api#617).
		o.ConsecutiveErrors, o.ConsecutiveGatewayErrors = -1, n
	}
	if n, ok, err := count("consecutive5xxErrors"); err != nil {
		return nil, err
	} else if ok {
		o.ConsecutiveErrors = off(n)
	}
	if n, ok, err := count("consecutiveGatewayErrors"); err != nil {
		return nil, err
	} else if ok {
		o.ConsecutiveGatewayErrors = off(n)
	}
	if n, ok, err := count("consecutiveLocalOriginFailures"); err != nil {
		return nil, err
	} else if ok {
		o.ConsecutiveLocalOriginFailures = n // 0: Envoy's default (5)
	}
	if v, ok := od["splitExternalLocalOriginErrors"]; ok {
		delete(od, "splitExternalLocalOriginErrors")
		b, isBool := v.(bool)
		if !isBool {
			return nil, fieldErr(f+".splitExternalLocalOriginErrors", "%v is not true or false", v)
		}
		o.SplitExternalLocalOriginErrors = b
	}
	for _, d := range []struct {
		key string
		to  *Duration
	}{{"interval", &o.Interval}, {"baseEjectionTime", &o.BaseEjectionTime}} {
		v, ok := od[d.key]
		if !ok {
			continue
		}
		delete(od, d.key)
		s, isStr := v.(string)
		if !isStr {
			return nil, fieldErr(f+"."+d.key, "%v is not a duration", v)
		}
		x, err := time.ParseDuration(s)
		if err != nil {
			return nil, fieldErr(f+"."+d.key, "%v", err)
		}
		if x < time.Millisecond {
			return nil, fieldErr(f+"."+d.key, "%s is below 1ms", s)
		}
		*d.to = Duration(x)
	}
	o.MaxEjectionTime = max(o.MaxEjectionTime, o.BaseEjectionTime) // Envoy: 300s or the base if larger
	for _, p := range []struct {
		key string
		to  *int
	}{{"maxEjectionPercent", &o.MaxEjectedPercent}, {"minHealthPercent", &o.MinHealthPercent}} {
		n, ok, err := count(p.key)
		if err != nil {
			return nil, err
		}
		if n > 100 {
			return nil, fieldErr(f+"."+p.key, "%d is not within 0 and 100", n)
		}
		if ok && (n > 0 || p.key == "minHealthPercent") {
			*p.to = n
		}
	}
	w.leftovers(f, od)
	return o, o.validate(f)
}

// nestedPolicy translates a subset's trafficPolicy or a portLevelSettings
// entry, at path, as the top-level trafficPolicy (the same code, so every
// field means the same in every place), with the warnings and errors
// naming its fields (odAbove: the top level it inherits from has
// outlierDetection). A subset's policy leaves what it does not set unset,
// so the top level's applies (Istio merges a subset's trafficPolicy into
// the DestinationRule's field by field); a port's sets Istio's defaults
// (Istio: "default values will be applied to fields omitted in
// port-level traffic policies").
func (w *walker) nestedPolicy(name, ns, host, path string, tp map[string]any, subset, odAbove bool) (*DestinationPolicySpec, error) {
	rebase := func(s string) string {
		if rest, ok := strings.CutPrefix(s, "spec.trafficPolicy"); ok {
			return path + rest
		}
		return s
	}
	sub := &walker{opts: w.opts, outlierAbove: odAbove}
	objs, err := sub.destinationRule(name, ns, map[string]any{"host": host, "trafficPolicy": tp})
	if err != nil {
		var fe *FieldError
		if errors.As(err, &fe) {
			fe.Field = rebase(fe.Field)
		}
		return nil, err
	}
	for _, m := range sub.warnings {
		w.warnings = append(w.warnings, rebase(m))
	}
	ps := objs[0].(*DestinationPolicy).Spec
	ps.Service = ""
	if subset && tp["outlierDetection"] == nil {
		ps.OutlierDetection = nil // the top level's applies
	}
	// Locality: a port's as translated (decided by the entry alone, as it
	// replaces loadBalancer and outlierDetection); a subset's is decided
	// after merging (subsetPolicies).
	return &ps, nil
}

// localityRaw is what decides locality in one level of a DestinationRule
// (its trafficPolicy, a subset's or a portLevelSettings entry), as written.
type localityRaw struct {
	lb, od  bool  // loadBalancer, outlierDetection set
	enabled *bool // loadBalancer.localityLbSetting.enabled, when set
}

func rawLocality(tp map[string]any) localityRaw {
	r := localityRaw{lb: tp["loadBalancer"] != nil, od: tp["outlierDetection"] != nil}
	if en, ok := obj(obj(tp["loadBalancer"])["localityLbSetting"])["enabled"].(bool); ok {
		r.enabled = &en
	}
	return r
}

// istioLocality is Istio's locality choice for a merged policy whose
// loadBalancer is lb's and with outlierDetection or not: nearest first
// only with outlier detection and localityLbSetting not disabled.
func istioLocality(lb localityRaw, od bool) string {
	if od && (lb.enabled == nil || *lb.enabled) {
		return LocalityTiers
	}
	return LocalityNone
}

// subsetPolicies completes the subsets' policies as Istio merges them
// (pilot's MergeTrafficPolicy): the DestinationRule's trafficPolicy with
// the request's port's portLevelSettings entry merged in (the entry's
// loadBalancer, connectionPool and outlierDetection replace the top
// level's, unset ones by the defaults), then the subset's set fields,
// then, alone, the subset's own portLevelSettings entry for the port.
//
// fogmesh's agent applies a policy's settings, then the subset's, and a
// port's over the service's own (policy.go). So each subset gets, for
// every top-level port entry it has none of its own for, an entry with
// that port's settings and the subset's over them; its locality is
// decided after merging (the nearest loadBalancer's localityLbSetting,
// outlierDetection from any level). A subset without a connectionPool of
// its own gets the DestinationRule's: Istio makes each subset a cluster of
// its own, with its own circuit breaker counters (a route splitting
// between v1 and v2 under maxConnections 1 may have one connection to
// each).
func subsetPolicies(p *DestinationPolicy, top localityRaw, ports map[int]localityRaw, subs []localityRaw) {
	pools := p.Spec.CircuitBreaker != nil
	for _, pp := range p.Spec.Ports {
		pools = pools || pp.Policy.CircuitBreaker != nil
	}
	for i := range p.Spec.Subsets {
		s := &p.Spec.Subsets[i]
		own := subs[i]
		if s.Policy == nil {
			if !pools {
				continue // nothing of its own: the service's views apply
			}
			s.Policy = &DestinationPolicySpec{}
		} else {
			lb := top
			if own.lb {
				lb = own
			}
			s.Policy.Locality = istioLocality(lb, own.od || top.od)
		}
	next:
		for _, pp := range p.Spec.Ports {
			for _, sp := range s.Policy.Ports {
				if sp.Port == pp.Port {
					continue next // the subset's own entry: alone
				}
			}
			e := pp.Policy
			lb := ports[pp.Port]
			if own.lb {
				e.Balancer, e.HashKey, lb = s.Policy.Balancer, s.Policy.HashKey, own
			}
			if own.od {
				e.OutlierDetection = s.Policy.OutlierDetection
			}
			if s.Policy.CircuitBreaker != nil {
				e.CircuitBreaker = s.Policy.CircuitBreaker
			}
			if e.CircuitBreaker != nil {
				cb := *e.CircuitBreaker
				e.CircuitBreaker = &cb
			}
			e.Locality = istioLocality(lb, own.od || ports[pp.Port].od)
			s.Policy.Ports = append(s.Policy.Ports, PortPolicy{Port: pp.Port, Policy: e})
		}
		if s.Policy.CircuitBreaker == nil && p.Spec.CircuitBreaker != nil {
			cb := *p.Spec.CircuitBreaker
			s.Policy.CircuitBreaker = &cb
		}
	}
}

// connectionPool translates trafficPolicy.connectionPool into cb, with
// Envoy's circuit breaker semantics (see CircuitBreaker).
func (w *walker) connectionPool(cp map[string]any, cb *CircuitBreaker) error {
	const f = "spec.trafficPolicy.connectionPool"
	count := func(m map[string]any, key, path string) (int, error) {
		v, ok := take[float64](m, key)
		if !ok {
			return 0, nil
		}
		if v < 0 || v != float64(int(v)) {
			return 0, fieldErr(path+"."+key, "%v is not a count", v)
		}
		return int(v), nil
	}
	duration := func(m map[string]any, key, path string) (Duration, error) {
		v, ok := take[string](m, key)
		if !ok {
			return 0, nil
		}
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return 0, fieldErr(path+"."+key, "%q is not a duration", v)
		}
		return Duration(d), nil
	}
	var err error
	if tcp := cloneMap(obj(cp["tcp"])); tcp != nil {
		delete(cp, "tcp")
		p := f + ".tcp"
		if cb.MaxConnections, err = count(tcp, "maxConnections", p); err != nil {
			return err
		}
		if cb.ConnectTimeout, err = duration(tcp, "connectTimeout", p); err != nil {
			return err
		}
		if ka := cloneMap(obj(tcp["tcpKeepalive"])); ka != nil {
			delete(tcp, "tcpKeepalive")
			kp := p + ".tcpKeepalive"
			cb.TCPKeepalive = &TCPKeepalive{}
			if cb.TCPKeepalive.Time, err = duration(ka, "time", kp); err != nil {
				return err
			}
			if cb.TCPKeepalive.Interval, err = duration(ka, "interval", kp); err != nil {
				return err
			}
			if cb.TCPKeepalive.Probes, err = count(ka, "probes", kp); err != nil {
				return err
			}
			w.leftovers(kp, ka)
		}
		w.leftovers(p, tcp)
	}
	if h := cloneMap(obj(cp["http"])); h != nil {
		delete(cp, "http")
		p := f + ".http"
		if cb.MaxRequests, err = count(h, "http2MaxRequests", p); err != nil {
			return err
		}
		if cb.MaxPendingRequests, err = count(h, "http1MaxPendingRequests", p); err != nil {
			return err
		}
		if cb.MaxRequestsPerConnection, err = count(h, "maxRequestsPerConnection", p); err != nil {
			return err
		}
		if cb.IdleTimeout, err = duration(h, "idleTimeout", p); err != nil {
			return err
		}
		if _, ok := h["maxRetries"]; ok {
			delete(h, "maxRetries")
			w.warnings = append(w.warnings, p+".maxRetries is ignored: fogmesh bounds retries by a budget per destination instead (at most 20% of its requests)")
		}
		w.leftovers(p, h)
	}
	// Pending requests wait for a connection, as Envoy's, and 0 means
	// Istio's default, no bound.
	cb.PendingFor = PendingForConnections
	return nil
}
