package api

import (
	"strings"
	"testing"
)

// TestIstioLocality: a DestinationRule prefers the nearest locality only
// with outlierDetection and localityLbSetting not disabled, as Istio does;
// what fogmesh does not implement of localityLbSetting is warned.
func TestIstioLocality(t *testing.T) {
	const od = "outlierDetection: {consecutive5xxErrors: 5}"
	for _, c := range []struct {
		name, trafficPolicy string
		want                string
		warn                []string
	}{
		{"no traffic policy", "", LocalityNone, nil},
		{"simple only", "{loadBalancer: {simple: ROUND_ROBIN}}", LocalityNone, nil},
		{"outlier detection", "{" + od + "}", LocalityTiers, nil},
		{"outlier detection, locality disabled", "{loadBalancer: {localityLbSetting: {enabled: false}}, " + od + "}", LocalityNone, nil},
		{"outlier detection, locality enabled", "{loadBalancer: {localityLbSetting: {enabled: true}}, " + od + "}", LocalityTiers, nil},
		{"locality enabled without outlier detection", "{loadBalancer: {localityLbSetting: {enabled: true}}}", LocalityNone,
			[]string{"localityLbSetting has no effect without outlierDetection"}},
		{"distribute and failover", `{loadBalancer: {localityLbSetting: {distribute: [{from: "r1/*", to: {"r1/*": 80, "r2/*": 20}}],
			failover: [{from: r1, to: r2}], failoverPriority: [topology.kubernetes.io/region], extra: 1}}, ` + od + "}", LocalityTiers,
			[]string{"localityLbSetting.distribute is ignored", "localityLbSetting.failover is ignored",
				"localityLbSetting.failoverPriority is ignored", "localityLbSetting.extra is not supported"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			doc := "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d, namespace: shop}\nspec:\n  host: cart\n"
			if c.trafficPolicy != "" {
				doc += "  trafficPolicy: " + c.trafficPolicy + "\n"
			}
			objs, warnings, err := DecodeWithWarnings([]byte(doc))
			if err != nil {
				t.Fatal(err)
			}
			if got := objs[0].(*DestinationPolicy).Spec.Locality; got != c.want {
				t.Errorf("locality %q, want %q", got, c.want)
			}
			all := strings.Join(warnings, "\n")
			for _, w := range c.warn {
				if !strings.Contains(all, w) {
					t.Errorf("no warning %q in:\n%s", w, all)
				}
			}
			if len(c.warn) == 0 && strings.Contains(all, "locality") {
				t.Errorf("unexpected warning:\n%s", all)
			}
		})
	}
}

func TestLocalityValidation(t *testing.T) {
	_, err := Decode([]byte(`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"s"},"spec":{"ports":[{"name":"p","port":1}],"locality":"near"}}`))
	if err == nil || !strings.Contains(err.Error(), "spec.locality") {
		t.Errorf("service: %v", err)
	}
	_, err = Decode([]byte(`{"apiVersion":"fogmesh.io/v1alpha1","kind":"DestinationPolicy","metadata":{"name":"p"},"spec":{"service":"s","locality":"near"}}`))
	if err == nil || !strings.Contains(err.Error(), "spec.locality") {
		t.Errorf("policy: %v", err)
	}
	for _, l := range []string{"", LocalityTiers, LocalityNone} {
		if _, err := Decode([]byte(`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"s"},"spec":{"ports":[{"name":"p","port":1}],"locality":"` + l + `"}}`)); err != nil {
			t.Errorf("locality %q: %v", l, err)
		}
	}
}

// TestIstioSubsetLocality: a subset's locality is decided after merging
// (Istio): the loadBalancer in force (the subset's if it sets one, else
// the top level's) and outlierDetection from either level. It used to be
// decided from the subset's trafficPolicy alone.
func TestIstioSubsetLocality(t *testing.T) {
	for _, c := range []struct{ name, top, sub, want string }{
		// The subset inherits the top loadBalancer (locality disabled) and adds OD: no locality preference.
		{"top disables, subset adds OD", "loadBalancer: {localityLbSetting: {enabled: false}}", "outlierDetection: {consecutive5xxErrors: 3}", LocalityNone},
		// The subset inherits the top OD, its loadBalancer enables locality: tiers.
		{"top OD, subset enables", "outlierDetection: {consecutive5xxErrors: 3}", "loadBalancer: {localityLbSetting: {enabled: true}}", LocalityTiers},
		// The subset's loadBalancer replaces the top's whole (localityLbSetting included).
		{"top disables, subset LB without it", "loadBalancer: {localityLbSetting: {enabled: false}}, outlierDetection: {consecutive5xxErrors: 3}", "loadBalancer: {simple: RANDOM}", LocalityTiers},
		{"no OD anywhere", "loadBalancer: {simple: RANDOM}", "connectionPool: {tcp: {maxConnections: 5}}", LocalityNone},
	} {
		doc := "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d, namespace: shop}\nspec:\n  host: reviews\n  trafficPolicy: {" + c.top + "}\n  subsets:\n  - name: v1\n    labels: {version: v1}\n    trafficPolicy: {" + c.sub + "}\n"
		objs, w, err := DecodeWithWarnings([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		p := objs[0].(*DestinationPolicy)
		got := p.Spec.Subsets[0].Policy.Locality
		if got == "" {
			got = p.Spec.Locality
		}
		if got != c.want {
			t.Errorf("%s: subset locality %q, want %q (warnings %q)", c.name, got, c.want, w)
		}
		if c.name == "top OD, subset enables" && len(w) != 0 {
			t.Errorf("%s: warnings %q (the subset inherits outlierDetection)", c.name, w)
		}
	}
}
