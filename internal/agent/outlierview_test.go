package agent

import (
	"io"
	"log/slog"
	"testing"

	"github.com/VictoriaMetrics/metrics"
	"github.com/fogmesh/fogmesh/internal/api"
)

// TestOutlierDetectorAcrossViews: the detector a destination view keeps
// (outlierDet) is the destination's for as long as the destination lasts:
// a view built after an endpoint joins sees the ejections made through the
// view before (and outcomes of requests still in flight on that one count
// there too); once the destination is dropped and comes back, its new
// views start afresh, and a request still in flight on a view from before
// ejects nothing in them.
func TestOutlierDetectorAcrossViews(t *testing.T) {
	a := &Agent{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	a.cfg.Metrics = metrics.NewSet()
	a.initMetrics()
	svc := &api.Service{Meta: api.Meta{Name: "r", Namespace: "shop"}, Spec: api.ServiceSpec{
		OutlierDetection: api.OutlierDetection{ConsecutiveErrors: 1, MaxEjectedPercent: 100, ConnectFailure: api.ConnectFailureCount}}}
	eps := []*endpointView{{key: "shop/a"}, {key: "shop/b"}, {key: "shop/c"}}
	viewOf := func(eps ...*endpointView) (*view, *serviceView) {
		sv := &serviceView{svc: svc, limitKey: "shop/r", endpoints: eps}
		v := &view{services: map[string]*serviceView{"shop/r": sv}}
		a.syncOutliers(v)
		return v, sv
	}
	_, sv1 := viewOf(eps[0], eps[1])
	a.outcome(sv1, eps[0], 500, false)
	_, sv2 := viewOf(eps...) // c joins
	if !a.isEjected(sv2, "shop/a") {
		t.Fatal("an ejection made through the view before is gone after an endpoint joined")
	}
	a.outcome(sv1, eps[1], 500, false) // a request still in flight on the old view
	if !a.isEjected(sv2, "shop/b") {
		t.Fatal("an outcome reported through the old view did not count for the destination")
	}
	a.syncOutliers(&view{services: map[string]*serviceView{}}) // the service dropped
	_, sv4 := viewOf(eps...)                                   // and back
	if a.isEjected(sv4, "shop/a") || a.isEjected(sv4, "shop/b") {
		t.Fatal("a destination that came back kept the ejections of the one dropped")
	}
	a.outcome(sv1, eps[2], 500, false) // in flight since before the drop
	if a.isEjected(sv4, "shop/c") {
		t.Fatal("a request from a view before the drop ejected an endpoint in the new views")
	}
	a.outcome(sv4, eps[2], 500, false)
	if !a.isEjected(sv4, "shop/c") {
		t.Fatal("the new view's own outcome did not eject")
	}
}
