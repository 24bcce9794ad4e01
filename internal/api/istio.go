package api

import (
	"encoding/json"
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
			if f.key != "queryParams" && strings.HasPrefix(hn, ":") && !strings.EqualFold(hn, ":authority") {
				// A Route refuses it (only :authority is evaluated);
				// ignoring it would widen the match.
				warnf("%s is skipped: %s.%s.%s: pseudo-header matches other than :authority are not supported", mp, mp, f.key, hn)
				return rm, false, nil
			}
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
