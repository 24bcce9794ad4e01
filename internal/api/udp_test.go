package api

import (
	"strings"
	"testing"
)

func TestUDPPortValidation(t *testing.T) {
	const head = `{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"coap"},"spec":{`
	objs, err := Decode([]byte(head + `"ports":[{"name":"coap","port":5683,"protocol":"udp"}],"timeouts":{"idle":"30s"},"balancer":"maglev"}}`))
	if err != nil {
		t.Fatalf("a udp port: %v", err)
	}
	if s := objs[0].(*Service); s.Spec.Ports[0].Protocol != "udp" || s.Spec.HashKey == nil || !s.Spec.HashKey.SourceIP || s.Spec.HashKey.MQTTClientID {
		t.Fatalf("decoded %+v", s.Spec)
	}
	// A service with udp and http ports keeps its HTTP settings.
	if _, err := Decode([]byte(head + `"ports":[{"name":"coap","port":5683,"protocol":"udp"},{"name":"web","port":80,"protocol":"http"}],"retries":{"attempts":3},"session":{"header":"x-user"}}}`)); err != nil {
		t.Fatalf("udp and http ports with retries and session: %v", err)
	}
	for _, c := range []struct{ spec, field string }{
		{`"ports":[{"port":5683,"protocol":"UDP"}]`, "spec.ports[0].protocol"},
		{`"ports":[{"port":5683,"protocol":"udp"}],"retries":{"attempts":3}`, "spec.retries"},
		{`"ports":[{"port":5683,"protocol":"udp"}],"session":{"header":"x-user"}`, "spec.session"},
		{`"ports":[{"port":5683,"protocol":"udp"}],"timeouts":{"request":"1s"}`, "spec.timeouts.request"},
		{`"ports":[{"port":5683,"protocol":"udp"}],"classes":[{"name":"urllc"}]`, "spec.classes"},
		{`"ports":[{"port":5683,"protocol":"udp"}],"hashKey":{"header":"x-user"},"balancer":"maglev"`, "spec.hashKey.header"},
		{`"ports":[{"port":5683,"protocol":"udp"}],"mqttInspect":true`, "spec.mqttInspect"},
		{`"ports":[{"port":5683,"protocol":"udp"}],"circuitBreaker":{"maxRequests":5}`, "spec.circuitBreaker.maxRequests"},
		{`"ports":[{"name":"a","port":5683,"protocol":"udp"},{"name":"b","port":5683,"protocol":"tcp"}]`, "spec.ports[1].port"},
	} {
		_, err := Decode([]byte(head + c.spec + `}}`))
		if err == nil || !strings.Contains(err.Error(), c.field) {
			t.Fatalf("%s: err %v, want it to name %s", c.spec, err, c.field)
		}
	}
	_, err = Decode([]byte(head + `"ports":[{"port":5683,"protocol":"udp"}],"retries":{"attempts":3}}}`))
	if !strings.Contains(err.Error(), "every port of this service is udp") {
		t.Fatalf("error does not say why: %v", err)
	}
}

// TestRouteOnUDPServiceRefused: a route decoded with the udp-only service
// it names is refused; with a service that also has an http port it is
// not.
func TestRouteOnUDPServiceRefused(t *testing.T) {
	route := "---\napiVersion: fogmesh.io/v1alpha1\nkind: Route\nmetadata: {name: r, namespace: demo}\nspec: {service: coap, rules: [{backends: [{subset: v1}]}]}\n"
	udpOnly := "apiVersion: fogmesh.io/v1alpha1\nkind: Service\nmetadata: {name: coap, namespace: demo}\nspec: {ports: [{name: coap, port: 5683, protocol: udp}]}\n"
	_, err := Decode([]byte(udpOnly + route))
	if err == nil || !strings.Contains(err.Error(), "Route demo/r: service demo/coap has only udp ports") {
		t.Fatalf("route on a udp-only service: %v", err)
	}
	mixed := strings.Replace(udpOnly, "protocol: udp}]", "protocol: udp}, {name: web, port: 80, protocol: http}]", 1)
	if _, err := Decode([]byte(mixed + route)); err != nil {
		t.Fatalf("route on a udp+http service: %v", err)
	}
}
