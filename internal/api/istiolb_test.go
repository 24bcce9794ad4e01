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
