package api

import "fmt"

// udpOnly reports whether every port of the service is udp: then nothing
// of it is HTTP, and the settings that only HTTP requests use are errors
// rather than silently unused.
func (s *Service) udpOnly() bool {
	for _, p := range s.Spec.Ports {
		if p.Protocol != "udp" {
			return false
		}
	}
	return len(s.Spec.Ports) > 0
}

// validateUDPOnly refuses, on a service whose ports are all udp, the
// fields that apply to HTTP requests or MQTT packets only. A service with
// udp and other ports keeps them: they apply to its other ports.
func (s *Service) validateUDPOnly() error {
	if !s.udpOnly() {
		return nil
	}
	sp := &s.Spec
	var hk HashKey
	if sp.HashKey != nil {
		hk = *sp.HashKey
	}
	for _, f := range []struct {
		name string
		set  bool
	}{
		{"spec.timeouts.request", sp.Timeouts.Request != 0},
		{"spec.timeouts.requestBody", sp.Timeouts.RequestBody != 0},
		{"spec.timeouts.send", sp.Timeouts.Send != 0},
		{"spec.retries", sp.Retries != RetryPolicy{}},
		{"spec.classes", len(sp.Classes) > 0},
		{"spec.defaultClass", sp.DefaultClass != ""},
		{"spec.session", sp.Session != nil},
		{"spec.egress", len(sp.Egress) > 0},
		{"spec.mqttInspect", sp.MQTTInspect},
		{"spec.hashKey.header", hk.Header != ""},
		{"spec.hashKey.cookie", hk.Cookie != ""},
		{"spec.hashKey.mqttClientID", hk.MQTTClientID},
		{"spec.circuitBreaker.maxRequests", sp.CircuitBreaker.MaxRequests != 0},
		{"spec.circuitBreaker.maxPendingRequests", sp.CircuitBreaker.MaxPendingRequests != 0},
		{"spec.circuitBreaker.maxRequestsPerConnection", sp.CircuitBreaker.MaxRequestsPerConnection != 0},
	} {
		if f.set {
			return fieldErr(f.name, "applies to HTTP or MQTT ports, and every port of this service is udp (datagrams are proxied per flow, not per request)")
		}
	}
	return nil
}

// checkUDPRoutes refuses a Route decoded together with the service it
// routes when every port of that service is udp: route rules match HTTP
// requests, which a udp port never carries. (A route applied apart from
// its service is not checked here; agents never apply it to a udp port.)
func checkUDPRoutes(objs []Object) error {
	udp := map[string]bool{}
	for _, o := range objs {
		if s, ok := o.(*Service); ok && s.udpOnly() {
			udp[s.Meta.Key()] = true
		}
	}
	if len(udp) == 0 {
		return nil
	}
	for _, o := range objs {
		r, ok := o.(*Route)
		if !ok {
			continue
		}
		if svc := NamespaceOr(r.Meta.Namespace) + "/" + r.Spec.Service; udp[svc] {
			return fmt.Errorf("Route %s: service %s has only udp ports; route rules match HTTP requests and cannot apply to it", r.Meta.Key(), svc)
		}
	}
	return nil
}
