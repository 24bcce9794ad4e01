package api

// The HTTP route actions of an Istio VirtualService: retries, mirroring
// and fault injection (istio.go walks the document and calls these).

import (
	"fmt"
	"strings"
	"time"
)

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
