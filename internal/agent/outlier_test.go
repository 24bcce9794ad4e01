package agent

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/outlier"
)

// TestOutlierConfigDefaults: fogmesh's own documents keep their documented
// defaults (5 consecutive errors, 10s × at most 10, 50 %), the older
// gatewayErrorsOnly still means gateway errors only, and -1 turns a
// counter off.
func TestOutlierConfigDefaults(t *testing.T) {
	for _, c := range []struct {
		name string
		od   api.OutlierDetection
		want outlier.Config
	}{
		{"zero", api.OutlierDetection{}, outlier.Config{Consecutive5xx: 5, ConsecutiveLocalOrigin: 5,
			BaseEjectionTime: 10 * time.Second, MaxEjectionTime: 100 * time.Second, MaxEjectionPercent: 50}},
		{"gatewayErrorsOnly", api.OutlierDetection{ConsecutiveErrors: 3, GatewayErrorsOnly: true}, outlier.Config{ConsecutiveGateway: 3,
			ConsecutiveLocalOrigin: 5, BaseEjectionTime: 10 * time.Second, MaxEjectionTime: 100 * time.Second, MaxEjectionPercent: 50}},
		{"off", api.OutlierDetection{ConsecutiveErrors: -1, ConsecutiveLocalOriginFailures: -1, SplitExternalLocalOriginErrors: true},
			outlier.Config{SplitLocalOrigin: true, BaseEjectionTime: 10 * time.Second, MaxEjectionTime: 100 * time.Second, MaxEjectionPercent: 50}},
		{"set", api.OutlierDetection{ConsecutiveErrors: 2, ConsecutiveGatewayErrors: 10, Interval: api.Duration(time.Second),
			BaseEjectionTime: api.Duration(time.Minute), MaxEjectionTime: api.Duration(time.Hour), MaxEjectedPercent: 20, MinHealthPercent: 30},
			outlier.Config{Consecutive5xx: 2, ConsecutiveGateway: 10, ConsecutiveLocalOrigin: 5, Interval: time.Second,
				BaseEjectionTime: time.Minute, MaxEjectionTime: time.Hour, MaxEjectionPercent: 20, MinHealthPercent: 30}},
	} {
		if got := outlierConfig(&c.od); got != c.want {
			t.Errorf("%s: got %+v\nwant %+v", c.name, got, c.want)
		}
	}
	if (outlierConfig(&api.OutlierDetection{ConsecutiveErrors: -1})).Enabled() {
		t.Error("consecutiveErrors -1 alone should turn detection off")
	}
}

// TestConnectFailurePolicy: a refused connect quarantines the endpoint
// for ejectFor under fogmesh's own policy (its documented default), but
// under an Istio DestinationRule it only counts as an error: Istio ejects
// nothing without outlierDetection, and with it only at the threshold
// (issue 11, item 5).
func TestConnectFailurePolicy(t *testing.T) {
	good, _ := startHTTP(t, "good")
	cp := startControl(t, t.TempDir(), "")
	var workloads []Workload
	for i, svc := range []string{"cfown", "cfistio", "cfcount"} {
		apply(t, cp, httpSvcDocLB(svc, 19218+i, "http", "round-robin"))
		dead := webWorkload(svc, svc+"-dead", 1) // port 1: nothing unprivileged listens there
		dead.Check.Type = "none"                 // only passive failures take it out
		workloads = append(workloads, webWorkload(svc, svc+"-good", good), dead)
	}
	apply(t, cp, `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: cfistio, namespace: demo}
spec: {host: cfistio}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: cfcount, namespace: demo}
spec: {host: cfcount, trafficPolicy: {outlierDetection: {consecutive5xxErrors: 100}}}
`)
	a := startAgent(t, agentOpts{name: "cfp", site: "s1", region: "r1", vipOctet: 218, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir(), workloads: workloads, ejectFor: time.Minute})
	waitFor(t, "both services and the Istio policy", func() bool {
		v := a.view.Load()
		for _, svc := range []string{"cfown", "cfistio", "cfcount"} {
			if sv := v.services["demo/"+svc]; sv == nil || len(sv.endpoints) != 2 {
				return false
			}
		}
		return v.services["demo/cfistio"].svc.Spec.OutlierDetection.ConnectFailure == api.ConnectFailureCount &&
			v.services["demo/cfcount"].svc.Spec.OutlierDetection.ConsecutiveErrors == 100
	})
	c := &http.Client{Timeout: 5 * time.Second}
	for i, svc := range []string{"cfown", "cfistio", "cfcount"} {
		vip := api.VIPFor(netip.MustParsePrefix("127.218.0.0/16"), a.view.Load().services["demo/"+svc].svc.Status.VIPIndex)
		url := fmt.Sprintf("http://%s:%d/", vip, 19218+i)
		for range 4 { // round robin: the dead endpoint comes first at least once
			resp, err := c.Get(url)
			if err != nil {
				t.Fatalf("%s: %v", svc, err)
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("%s: %s; want 200 from the good endpoint after failing over", svc, resp.Status)
			}
		}
	}
	if !a.isEjectedAnywhere("demo/cfown-dead") {
		t.Error("fogmesh's own service: the endpoint refusing connections is not quarantined")
	}
	if a.isEjectedAnywhere("demo/cfistio-dead") {
		t.Error("Istio DestinationRule without outlierDetection: the endpoint refusing connections was ejected")
	}
	// With outlierDetection the refused connects count as 5xx errors
	// (Envoy maps a connect failure to 503), short of ejecting.
	if got := a.outliers.State("demo/cfcount", "demo/cfcount-dead", time.Now()); got.Consecutive5xx == 0 || got.Ejected || a.isEjectedAnywhere("demo/cfcount-dead") {
		t.Errorf("the refused connects were not counted, or ejected: %+v", got)
	}
}

// TestSubsetViewKeepsServiceEjections: a subset with a traffic policy of
// its own has an outlier detector of its own (Istio: a cluster per
// subset); a request routed to it neither reconfigures nor resets the
// service's detector (reviewer's regression: a 200 from subset v1's view,
// whose outlierDetection is off, un-ejected the service's endpoint).
func TestSubsetViewKeepsServiceEjections(t *testing.T) {
	a := &Agent{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	a.cfg.Metrics = metrics.NewSet()
	a.initMetrics()
	svc := &api.Service{Meta: api.Meta{Name: "r", Namespace: "shop"}, Spec: api.ServiceSpec{
		OutlierDetection: api.OutlierDetection{ConsecutiveErrors: 1, MaxEjectedPercent: 100, ConnectFailure: api.ConnectFailureCount}}}
	eps := []*endpointView{{key: "shop/a"}, {key: "shop/b"}}
	sv := &serviceView{svc: svc, limitKey: "shop/r", endpoints: eps}
	p := &api.DestinationPolicy{Spec: api.DestinationPolicySpec{Subsets: []api.Subset{
		{Name: "v1", Labels: map[string]string{"v": "1"}, Policy: &api.DestinationPolicySpec{
			OutlierDetection: &api.OutlierDetection{ConsecutiveErrors: -1, ConnectFailure: api.ConnectFailureCount},
			CircuitBreaker:   &api.CircuitBreaker{MaxConnections: 5}}},
	}}}
	sv.dests = destViews(sv, p)
	v := &view{services: map[string]*serviceView{"shop/r": sv}}
	a.syncOutliers(v)
	a.outcome(sv, eps[0], 500, false)
	if !a.isEjected(sv, "shop/a") {
		t.Fatal("setup: a not ejected after one 500")
	}
	v1 := effectivePolicy(sv, "v1", "")
	if a.isEjected(v1, "shop/a") {
		t.Error("the service's ejection applies to subset v1 (its own detector, detection off)")
	}
	a.outcome(v1, eps[1], 200, false) // one request routed to subset v1
	a.outcome(v1, eps[0], 500, false)
	if !a.isEjected(sv, "shop/a") {
		t.Error("requests to subset v1 un-ejected shop/a for the service")
	}
	if a.isEjected(v1, "shop/a") {
		t.Error("subset v1 (detection off) ejected shop/a")
	}
}
