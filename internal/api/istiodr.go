package api

// An Istio DestinationRule: subsets, load balancing and locality,
// outlier detection, connection pools, subset and port-level traffic
// policies (translated into a DestinationPolicy).

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

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
