package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestDecodeForms(t *testing.T) {
	svc := `{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":80}]}}`
	ep := `{"apiVersion":"fogmesh.io/v1alpha1","kind":"Endpoint","metadata":{"name":"e","namespace":"ns"},"spec":{"service":"a","address":"2001:db8::1","ports":[{"port":8080}]}}`
	for name, doc := range map[string]string{
		"json object": svc,
		"json array":  "[" + svc + "," + ep + "]",
		"list":        `{"kind":"List","items":[` + svc + "," + ep + `]}`,
		"yaml multi": "# comment\n---\napiVersion: fogmesh.io/v1alpha1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n---\n" +
			"apiVersion: fogmesh.io/v1alpha1\nkind: Endpoint\nmetadata: {name: e, namespace: ns}\nspec: {service: a, address: '2001:db8::1', ports: [{port: 8080}]}\n",
	} {
		objs, err := Decode([]byte(doc))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		s := objs[0].(*Service)
		if s.Meta.Namespace != "default" || s.Spec.Ports[0].Name != "default" || s.Spec.Ports[0].Protocol != "tcp" || s.Spec.Balancer != "edge-aware" {
			t.Fatalf("%s: defaults not filled: %+v", name, s)
		}
	}
}

// TestServiceExport: export names regions or "*"; ExportedTo follows it.
func TestServiceExport(t *testing.T) {
	objs, err := Decode([]byte(`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":1}],"export":["west"]}}`))
	if err != nil {
		t.Fatal(err)
	}
	s := objs[0].(*Service)
	if !s.ExportedTo("west") || s.ExportedTo("east") {
		t.Fatalf("export [west]: west %v east %v", s.ExportedTo("west"), s.ExportedTo("east"))
	}
	s.Spec.Export = []string{ExportAll}
	if !s.ExportedTo("east") || err != nil {
		t.Fatal("export [*] does not reach east")
	}
	s.Spec.Export = nil
	if s.ExportedTo("west") {
		t.Fatal("a service without export is exported")
	}
}

func TestDecodeErrorsNameTheField(t *testing.T) {
	for _, c := range []struct{ doc, field string }{
		{`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":0}]}}`, "spec.ports[0].port"},
		{`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":1},{"port":1,"name":"x"}]}}`, "spec.ports[0].name"},
		{`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Node","metadata":{"name":"n"},"spec":{"site":"s","region":"r","meshAddress":"nohost"}}`, "spec.meshAddress"},
		{`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Node","metadata":{"name":"n"},"spec":{"site":"s"}}`, "spec.region"},
		{`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Endpoint","metadata":{"name":"e"},"spec":{"service":"a","address":"fe80::1%eth0","ports":[{"port":1}]}}`, "spec.address"},
		{`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Endpoint","metadata":{"name":"e"},"spec":{"service":"a","address":"10.0.0.1","ports":[{"port":1}],"weight":-1}}`, "spec.weight"},
		{`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"a","nmespace":"x"},"spec":{"ports":[{"port":1}]}}`, "metadata.nmespace"},
		// Issue 16: a nested unknown field and a bad duration by their full path.
		{`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":1,"bogus":2}]}}`, "spec.ports[0].bogus"},
		{`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":1}],"timeouts":{"connect":"soon"}}}`, "spec.timeouts.connect"},
		{`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":1}],"classes":[{"name":"c","retries":{"perTryTimeout":"3 s"}}]}}`, "spec.classes[0].retries.perTryTimeout"},
		{`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":"80"}]}}`, "spec.ports[0].port"},
		{`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":1}],"retries":{"methods":"post"}}}`, "spec.retries.methods"},
		{`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":1}],"retries":{"on":"5xx,sometimes"}}}`, "spec.retries.on"},
		{`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":1}],"retries":{"on":"700"}}}`, "spec.retries.on"},
		{`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":1}],"retries":{"perTryTimeout":"-1s"}}}`, "spec.retries.perTryTimeout"},
		{`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":1}],"classes":[{"name":"c","retries":{"attempts":6}}]}}`, "spec.classes[0].retries.attempts"},
		{`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":1}],"export":["east","East"]}}`, "spec.export[1]"},
		{`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":1}],"export":["east","*"]}}`, "spec.export[1]"},
		{`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":1}],"export":["east","east"]}}`, "spec.export[1]"},
	} {
		_, err := Decode([]byte(c.doc))
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != c.field {
			t.Errorf("%s: got %v, want an error naming %s", c.doc, err, c.field)
		}
	}
}

// FuzzDecode: no input crashes Decode, and whatever it accepts is valid and
// survives a JSON round trip.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":80}]}}`))
	f.Add([]byte("apiVersion: fogmesh.io/v1alpha1\nkind: Node\nmetadata: {name: n}\nspec: {site: s, region: r, meshAddress: '[::1]:7072'}\n"))
	f.Add([]byte(`[{"kind":"List","items":[]}]`))
	f.Add([]byte("---\n---\n"))
	f.Add([]byte("kind: [\n"))
	f.Add([]byte("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: shop}\nspec:\n  hosts: [reviews]\n  http:\n  - match: [{headers: {u: {exact: j}}, uri: {prefix: /a}}]\n    route: [{destination: {host: reviews, subset: v2}, weight: 10}]\n    retries: {attempts: 0, retryOn: 5xx}\n    timeout: 1s\n"))
	f.Add([]byte("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec: {host: r, subsets: [{name: v1, labels: {version: v1}}], trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x}}, outlierDetection: {consecutive5xxErrors: 2}}}\n"))
	f.Add([]byte("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec: {host: r, trafficPolicy: {outlierDetection: {consecutive5xxErrors: 0, consecutiveGatewayErrors: 3, interval: 1ms, baseEjectionTime: 2s, maxEjectionPercent: 100, minHealthPercent: 50, splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailures: 2}}}\n"))
	f.Add([]byte("apiVersion: fogmesh.io/v1alpha1\nkind: Service\nmetadata: {name: s}\nspec:\n  ports: [{port: 80, protocol: http}]\n  egress: [{name: e, when: {leavingSite: true, toRegions: [cloud]}, mask: {detectors: [cn-id, cn-mobile], jsonPaths: [{path: '$.items[*].card', action: drop}], regexes: [{name: r, pattern: 'a+'}], headers: [{name: x-a}], keepFirst: 3}}]\n"))
	f.Add([]byte(`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Session","metadata":{"namespace":"d"},"spec":{"service":"s","key":"k","endpoint":"e"}}`))
	f.Add([]byte(`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Route","metadata":{"name":"r"},"spec":{"service":"s","rules":[{"match":[{"path":{"regex":"a+"}}],"backends":[{"subset":"v1","weight":3}]}]}}`))
	f.Add([]byte(`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Route","metadata":{"name":"r"},"spec":{"service":"s","rules":[{"name":"n","backends":[{}],"mirror":{"subset":"v2","percent":50},"fault":{"delay":{"fixedDelay":"1ms","percent":50},"abort":{"httpStatus":503,"grpcStatus":14,"percent":10}}}]}}`))
	f.Add([]byte(`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":80,"protocol":"mqtt"}],"balancer":"maglev","hashKey":{"mqttClientID":true},"timeouts":{"idle":"30s"},"circuitBreaker":{"maxRequests":2,"maxPendingRequests":5}}}`))
	f.Add([]byte("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n  hosts: [a]\n  http:\n  - route: [{destination: {host: a}}]\n    mirrors: [{destination: {host: b, subset: s}, percentage: {value: 1}}]\n    fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 50}}, delay: {fixedDelay: 1s, percent: 2}}\n"))
	f.Add([]byte("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec: {host: r, trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 7}}}, connectionPool: {http: {http1MaxPendingRequests: 3}}}}\n"))
	f.Add([]byte("apiVersion: fogmesh.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  service: orders\n  action: DENY\n  rules:\n  - from: [{principals: ['spiffe://fogmesh.local/ns/shop/*'], notNamespaces: [ops]}]\n    to: [{ports: ['80', http], methods: [get], paths: ['/api/*', '*.json'], publish: ['a/+/b'], subscribe: ['#']}]\n    when: [{key: 'request.headers[x-env]', values: [prod], notValues: ['*']}]\n"))
	f.Add([]byte("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  selector: {matchLabels: {app: reviews}}\n  action: ALLOW\n  rules:\n  - from: [{source: {principals: [cluster.local/ns/shop/sa/pp], requestPrincipals: ['*']}}]\n    to: [{operation: {methods: [GET], paths: ['/r/*'], hosts: [x]}}]\n    when: [{key: request.headers[v], values: [v1]}, {key: source.ip, values: [10.0.0.1]}]\n"))
	f.Add([]byte("apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: d, namespace: shop}\nspec: {mtls: {mode: PERMISSIVE}, portLevelMtls: {'80': {mode: DISABLE}}}\n"))
	f.Add([]byte("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n  hosts: [a]\n  gateways: [mesh, gw]\n  http:\n  - match: [{queryParams: {q: {exact: ''}, r: {regex: 'x+'}}, withoutHeaders: {h: {}}}, {sourceLabels: {app: x}}, {gateways: [gw]}, {ignoreUriCase: false, statPrefix: s}]\n    route: [{destination: {host: a, subset: v1}, weight: 70}, {destination: {host: a, subset: v2}}]\n"))
	f.Add([]byte("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n  hosts: [a]\n  http: [{match: [{port: 80}], route: [{destination: {host: a}}]}]\n"))
	f.Add([]byte(`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Route","metadata":{"name":"r"},"spec":{"service":"s","unmatched":"reject","rules":[{"match":[{"queryParams":{"a":{"prefix":"b"}},"withoutHeaders":{"X":{}}}],"backends":[{}]}]}}`))
	f.Add([]byte("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: istio-system}\nspec: {action: DENY, rules: [{to: [{operation: {methods: [DELETE]}}]}]}\n"))
	f.Add([]byte("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec:\n  host: r\n  trafficPolicy: {connectionPool: {tcp: {maxConnections: 1, connectTimeout: 1s, tcpKeepalive: {time: 1s}}, http: {http1MaxPendingRequests: 1, http2MaxRequests: 2, maxRequestsPerConnection: 1, maxRetries: 1, idleTimeout: 2s}}}\n  subsets: [{name: v1, labels: {version: v1}, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}, connectionPool: {tcp: {maxConnections: 2}}, outlierDetection: {consecutive5xxErrors: 1}, portLevelSettings: []}}, {name: v2, labels: {version: v2}}]\n"))
	f.Add([]byte(`{"apiVersion":"fogmesh.io/v1alpha1","kind":"DestinationPolicy","metadata":{"name":"p"},"spec":{"service":"s","subsets":[{"name":"v1","labels":{"v":"1"},"policy":{"balancer":"random","circuitBreaker":{"maxConnections":1,"pendingFor":"connections","idleTimeout":"1s"}}}]}}`))
	f.Add([]byte("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec:\n  host: r\n  trafficPolicy: {connectionPool: {tcp: {maxConnections: 9}}, portLevelSettings: [{port: {number: 80}, connectionPool: {http: {http2MaxRequests: 1}}, loadBalancer: {simple: RANDOM}}]}\n  subsets: [{name: a, labels: {v: a}, trafficPolicy: {portLevelSettings: [{port: {number: 80}, outlierDetection: {consecutive5xxErrors: 2}}]}}]\n"))
	f.Add([]byte(`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":1}],"export":["west","north"]}}`))
	// Issue 16: nested unknown fields, bad durations, a hashing balancer
	// without a key.
	f.Add([]byte(`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":1,"bogus":2}]}}`))
	f.Add([]byte("apiVersion: fogmesh.io/v1alpha1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 1}], timeouts: {connect: soon}, classes: [{name: c, retries: {perTryTimeout: 3 s}}]}\n"))
	f.Add([]byte(`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":80}],"balancer":"consistent-hash"}}`))
	f.Add([]byte(`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Route","metadata":{"name":"r"},"spec":{"service":"s","rules":[{"match":[{"headers":{"x":{"exact":"1","bogus":1}}}],"backends":[{}]}]}}`))
	f.Add([]byte(`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[[[[[[[[[[[[[[{}]]]]]]]]]]]]]]}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		objs, err := Decode(b)
		if err != nil {
			return
		}
		for _, o := range objs {
			j, err := json.Marshal(o)
			if err != nil {
				t.Fatal(err)
			}
			o2, err := DecodeObject(j)
			if err != nil {
				t.Fatalf("accepted object does not re-decode: %v\n%s", err, j)
			}
			if ObjectKey(o) != ObjectKey(o2) || !strings.Contains(ObjectKey(o), o.GetKind()) {
				t.Fatalf("key changed: %s vs %s", ObjectKey(o), ObjectKey(o2))
			}
		}
	})
}

// TestHashBalancerWithoutKeyWarns (issue 16): consistent-hash or maglev
// without spec.hashKey is applied with a warning naming spec.hashKey and
// what it defaults to; with a hashKey, or another balancer, no warning.
func TestHashBalancerWithoutKeyWarns(t *testing.T) {
	const doc = `{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":80}]%s}}`
	for _, c := range []struct {
		extra string
		warn  bool
	}{
		{`,"balancer":"consistent-hash"`, true},
		{`,"balancer":"maglev"`, true},
		{`,"balancer":"consistent-hash","hashKey":{"header":"x-user"}`, false},
		{`,"balancer":"round-robin"`, false},
		{``, false},
	} {
		objs, warns, err := DecodeWithWarnings([]byte(fmt.Sprintf(doc, c.extra)))
		if err != nil || len(objs) != 1 {
			t.Fatalf("%s: %v", c.extra, err)
		}
		got := len(warns) == 1 && strings.Contains(warns[0], "spec.hashKey") && strings.Contains(warns[0], "source IP")
		if got != c.warn || (!c.warn && len(warns) > 0) {
			t.Errorf("%s: warnings %q, want a spec.hashKey warning: %v", c.extra, warns, c.warn)
		}
	}
}
