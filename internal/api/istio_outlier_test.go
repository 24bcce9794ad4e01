package api

import (
	"strings"
	"testing"
	"time"
)

func drDoc(trafficPolicy string) string {
	doc := "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d, namespace: shop}\nspec:\n  host: reviews\n"
	if trafficPolicy != "" {
		doc += "  trafficPolicy:\n    outlierDetection: " + trafficPolicy + "\n"
	}
	return doc
}

// TestIstioOutlierDetection: every field of a DestinationRule's
// outlierDetection, with Istio's defaults, and none of it without one
// (issue 11: without outlierDetection an always-500 endpoint was ejected;
// consecutiveGatewayErrors overwrote consecutive5xxErrors).
func TestIstioOutlierDetection(t *testing.T) {
	s := func(d time.Duration) Duration { return Duration(d) }
	istioDefault := OutlierDetection{ConsecutiveErrors: 5, Interval: s(10 * time.Second), BaseEjectionTime: s(30 * time.Second),
		MaxEjectionTime: s(300 * time.Second), MaxEjectedPercent: 10, ConnectFailure: ConnectFailureCount}
	with := func(f func(o *OutlierDetection)) OutlierDetection {
		o := istioDefault
		f(&o)
		return o
	}
	for _, c := range []struct {
		name, od string
		want     OutlierDetection
	}{
		{"none: nothing is ejected", "", OutlierDetection{ConsecutiveErrors: -1, ConnectFailure: ConnectFailureCount}},
		{"empty: Istio's defaults", "{}", istioDefault},
		{"both counters", "{consecutive5xxErrors: 2, consecutiveGatewayErrors: 10}", with(func(o *OutlierDetection) {
			o.ConsecutiveErrors, o.ConsecutiveGatewayErrors = 2, 10
		})},
		{"0 turns a counter off", "{consecutive5xxErrors: 0, consecutiveGatewayErrors: 3}", with(func(o *OutlierDetection) {
			o.ConsecutiveErrors, o.ConsecutiveGatewayErrors = -1, 3
		})},
		{"deprecated consecutiveErrors counts gateway errors", "{consecutiveErrors: 4}", with(func(o *OutlierDetection) {
			o.ConsecutiveErrors, o.ConsecutiveGatewayErrors = -1, 4
		})},
		{"durations and percentages", "{interval: 2s, baseEjectionTime: 400s, maxEjectionPercent: 100, minHealthPercent: 60}", with(func(o *OutlierDetection) {
			o.Interval, o.BaseEjectionTime, o.MaxEjectionTime = s(2*time.Second), s(400*time.Second), s(400*time.Second)
			o.MaxEjectedPercent, o.MinHealthPercent = 100, 60
		})},
		{"maxEjectionPercent 0 is the default", "{maxEjectionPercent: 0}", istioDefault},
		{"local origin split", "{splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailures: 2}", with(func(o *OutlierDetection) {
			o.SplitExternalLocalOriginErrors, o.ConsecutiveLocalOriginFailures = true, 2
		})},
	} {
		t.Run(c.name, func(t *testing.T) {
			objs, warnings, err := DecodeWithWarnings([]byte(drDoc(c.od)))
			if err != nil {
				t.Fatal(err)
			}
			if len(warnings) > 0 {
				t.Errorf("warnings: %q", warnings)
			}
			p := objs[0].(*DestinationPolicy)
			if p.Spec.OutlierDetection == nil || *p.Spec.OutlierDetection != c.want {
				t.Fatalf("got %+v\nwant %+v", p.Spec.OutlierDetection, c.want)
			}
		})
	}
}

// TestOutlierDetectionBounds: out-of-range values are refused with the
// field named, from Istio documents and fogmesh's own.
func TestOutlierDetectionBounds(t *testing.T) {
	svc := func(od string) string {
		return "apiVersion: fogmesh.io/v1alpha1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{name: web, port: 80}], outlierDetection: " + od + "}\n"
	}
	policy := func(od string) string {
		return "apiVersion: fogmesh.io/v1alpha1\nkind: DestinationPolicy\nmetadata: {name: p}\nspec: {service: s, outlierDetection: " + od + "}\n"
	}
	for _, c := range []struct{ doc, want string }{
		{drDoc("{consecutive5xxErrors: -1}"), "outlierDetection.consecutive5xxErrors"},
		{drDoc("{consecutiveGatewayErrors: 1.5}"), "outlierDetection.consecutiveGatewayErrors"},
		{drDoc("{consecutiveLocalOriginFailures: x}"), "outlierDetection.consecutiveLocalOriginFailures"},
		{drDoc("{interval: 0.5ms}"), "outlierDetection.interval"},
		{drDoc("{interval: soon}"), "outlierDetection.interval"},
		{drDoc("{baseEjectionTime: 0s}"), "outlierDetection.baseEjectionTime"},
		{drDoc("{maxEjectionPercent: 101}"), "outlierDetection.maxEjectionPercent"},
		{drDoc("{minHealthPercent: 200}"), "outlierDetection.minHealthPercent"},
		{drDoc("{splitExternalLocalOriginErrors: maybe}"), "outlierDetection.splitExternalLocalOriginErrors"},
		{svc("{consecutiveGatewayErrors: -2}"), "spec.outlierDetection.consecutiveGatewayErrors"},
		{svc("{minHealthPercent: 101}"), "spec.outlierDetection.minHealthPercent"},
		{svc("{interval: -1s}"), "spec.outlierDetection.interval"},
		{svc("{baseEjectionTime: 1m, maxEjectionTime: 10s}"), "spec.outlierDetection.maxEjectionTime"},
		{svc("{connectFailure: ignore}"), "spec.outlierDetection.connectFailure"},
		{policy("{maxEjectedPercent: -1}"), "spec.outlierDetection.maxEjectedPercent"},
		{policy("{consecutiveLocalOriginFailures: -3}"), "spec.outlierDetection.consecutiveLocalOriginFailures"},
	} {
		if _, _, err := DecodeWithWarnings([]byte(c.doc)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s\ngot %v, want an error naming %q", c.doc, err, c.want)
		}
	}
}

// TestIstioSubsetInheritsOutlier: a subset's trafficPolicy without
// outlierDetection inherits the DestinationRule's (Istio merges field by
// field); it used to get detection off.
func TestIstioSubsetInheritsOutlier(t *testing.T) {
	doc := `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: d, namespace: shop}
spec:
  host: reviews
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 3}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      connectionPool: {tcp: {maxConnections: 5}}
`
	objs, _, err := DecodeWithWarnings([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	p := objs[0].(*DestinationPolicy)
	if od := p.Spec.Subsets[0].Policy.OutlierDetection; od != nil {
		t.Errorf("subset without outlierDetection overrides the top-level's: %+v (Istio: inherits consecutive5xxErrors 3)", *od)
	}
	if p.Spec.OutlierDetection == nil || p.Spec.OutlierDetection.ConsecutiveErrors != 3 {
		t.Errorf("top-level outlierDetection %+v, want consecutive5xxErrors 3", p.Spec.OutlierDetection)
	}
}
