package agent

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/httpproxy"
	"github.com/fogmesh/fogmesh/internal/paths"
)

// Per-request metrics of the L7 path: request counts by status class and
// durations per endpoint and route, and a gRPC response's status.

// requestMetrics records one attempt of a request. code 0 means no
// response. The series of an endpoint, route, source and path are looked up
// once and cached. Labels are bounded by endpoints × rule names × the
// node's client identities × 5 path kinds: no paths, no status codes.
func (a *Agent) requestMetrics(src, svc, route string, ev *endpointView, code int, d time.Duration) {
	class := 0 // "error"
	if code >= 100 && code < 600 {
		class = code / 100
	}
	k := metricsKey{src, svc, route, ev.ep.Meta.Name, ev.ep.Spec.Node, ev.tier, a.pathKind(ev)}
	var m *endpointMetrics
	if c := ev.metrics.Load(); c != nil && c.k == k {
		m = c.m
	} else {
		m = a.endpointMetrics(k, ev)
		if c == nil { // the first key of the view's endpoint: most requests have it
			ev.metrics.Store(&keyedMetrics{k, m})
		}
	}
	m.byClass[class].Inc()
	m.duration.Update(d.Seconds())
	if m.row != nil {
		m.row.observe(class, d.Seconds())
	} else {
		a.goldenRows.droppedReqs.Add(1)
	}
}

// epHandles are what requests to an endpoint view look up in the agent's
// maps, kept with the view (a new view has new endpoint views, so nothing
// outlives a configuration change): its statistics (stats: statsByEP
// never drops an entry) and the request series of its first metricsKey
// (reqMetrics never drops one either). A request with another key (another
// source, route or path kind) looks its series up as before.
type epHandles struct {
	stats   atomic.Pointer[epStats]
	metrics atomic.Pointer[keyedMetrics]
	h1pool  atomic.Pointer[h1PoolEntry] // the fast path's pool of the first destination and port asked (h1Path.poolFor)
}

type keyedMetrics struct {
	k metricsKey
	m *endpointMetrics
}

// epStats returns a.stats(ev.key), cached with ev.
func (a *Agent) epStats(ev *endpointView) *epStats {
	if s := ev.stats.Load(); s != nil {
		return s
	}
	s := a.stats(ev.key)
	ev.stats.Store(s)
	return s
}

// endpointMetrics returns the series of key k (of endpoint ev), made on
// first use.
func (a *Agent) endpointMetrics(k metricsKey, ev *endpointView) *endpointMetrics {
	svc, src, route := k.svc, k.src, k.route
	v, ok := a.reqMetrics.Load(k)
	if !ok {
		labels := fmt.Sprintf(`service=%q,endpoint=%q,node=%q,site=%q,tier=%q,route=%q,source_node=%q,source_site=%q,source_service=%q,path=%q`,
			svc, ev.ep.Meta.Name, ev.ep.Spec.Node, ev.site, ev.tier, route, a.cfg.Node.Name, a.cfg.Node.Site, sourceService(src), k.path)
		m := &endpointMetrics{duration: a.cfg.Metrics.GetOrCreatePrometheusHistogramExt(`fogmesh_http_request_duration_seconds{`+labels+`}`, latencyBuckets),
			row: a.goldenRows.row(statKey{svc: svc, node: ev.ep.Spec.Node, site: ev.site, src: sourceService(src), tier: ev.tier.String(), path: k.path})}
		for c := range m.byClass {
			name := "error"
			if c > 0 {
				name = fmt.Sprintf("%dxx", c)
			}
			m.byClass[c] = a.cfg.Metrics.GetOrCreateCounter(`fogmesh_http_requests_total{` + labels + `,code_class="` + name + `"}`)
		}
		v, _ = a.reqMetrics.LoadOrStore(k, m)
	}
	return v.(*endpointMetrics)
}

// maxServerSeries bounds the destination side's request series: past it,
// new sources are labelled "other" (source_service and source_node), so a
// flood of claimed names cannot grow the agent's memory.
const maxServerSeries = 4096

type serverKey struct{ svc, src, node string }

// serverMetrics records one request a peer's agent sent over the mesh
// (authzServer): fogmesh_http_server_requests_total by status class and
// fogmesh_http_server_request_duration_seconds, the time to the response
// header, per service, source service and source node. code 0 means no
// response.
func (a *Agent) serverMetrics(src, svc, srcNode string, code int, d time.Duration) {
	class := 0
	if code >= 100 && code < 600 {
		class = code / 100
	}
	k := serverKey{svc, sourceService(src), srcNode}
	v, ok := a.srvMetrics.Load(k)
	if !ok {
		if a.srvSeries.Load() >= maxServerSeries {
			k.src, k.node = "other", "other"
			v, ok = a.srvMetrics.Load(k)
		}
	}
	if !ok {
		labels := fmt.Sprintf(`service=%q,source_service=%q,source_node=%q,node=%q`, svc, k.src, k.node, a.cfg.Node.Name)
		m := &endpointMetrics{duration: a.cfg.Metrics.GetOrCreatePrometheusHistogramExt(`fogmesh_http_server_request_duration_seconds{`+labels+`}`, latencyBuckets)}
		for c := range m.byClass {
			name := "error"
			if c > 0 {
				name = fmt.Sprintf("%dxx", c)
			}
			m.byClass[c] = a.cfg.Metrics.GetOrCreateCounter(`fogmesh_http_server_requests_total{` + labels + `,code_class="` + name + `"}`)
		}
		var loaded bool
		if v, loaded = a.srvMetrics.LoadOrStore(k, m); !loaded {
			a.srvSeries.Add(1)
		}
	}
	m := v.(*endpointMetrics)
	m.byClass[class].Inc()
	m.duration.Update(d.Seconds())
}

// latencyBuckets are the upper bounds (seconds) of the request duration
// histogram: Prometheus "le" buckets, so histogram_quantile gives
// percentiles; 0.5 ms to 30 s, for loopback hops and cross-region calls.
var latencyBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}

// Path kinds of the path label: how a request reached its endpoint.
const (
	pathSameNode    = "same_node"    // an endpoint on this node
	pathSameSite    = "same_site"    // another node of this site
	pathSameRegion  = "same_region"  // another site of this region
	pathCrossRegion = "cross_region" // another region
	pathRelayed     = "relayed"      // another node, through a relay (no direct or punched path)
)

// pathKind is the path label of a request to ev: its locality tier, or
// relayed when the mesh session to its node runs through a relay now.
func (a *Agent) pathKind(ev *endpointView) string {
	if node := remoteNode(ev); node != "" && a.peers != nil && a.peers.PathKind(node) == paths.Relayed {
		return pathRelayed
	}
	switch ev.tier {
	case TierNode:
		return pathSameNode
	case TierSite:
		return pathSameSite
	case TierRegion:
		return pathSameRegion
	}
	return pathCrossRegion
}

// sourceService names a request's source for the metrics: its client's
// workload identity as namespace/account (an account names its service
// by default), or "unknown" for a client the agent could not identify.
func sourceService(id string) string {
	if _, rest, ok := strings.Cut(id, "/ns/"); ok {
		if ns, sa, ok := strings.Cut(rest, "/sa/"); ok {
			return ns + "/" + sa
		}
	}
	return "unknown"
}

// routeName labels a rule's requests: its name ("" for an unnamed rule or
// a service without a route).
func routeName(rule *api.RouteRule) string {
	if rule == nil {
		return ""
	}
	return rule.Name
}

type metricsKey struct {
	src, svc, route, endpoint, node string
	tier                            Tier
	path                            string
}

// endpointMetrics are one endpoint's request series; byClass[0] counts
// requests without a response, byClass[n] status class nxx.
type endpointMetrics struct {
	byClass  [6]*metrics.Counter
	duration *metrics.PrometheusHistogram
	// row is the heartbeat stats row the series adds to (nil: the
	// agent tracks wire.MaxStatRows rows already).
	row *statRow
}

// grpcStatusBody records a gRPC response's status when its body ends: the
// grpc-status trailer, or the header of a trailers-only response.
type grpcStatusBody struct {
	io.ReadCloser
	resp          *http.Response
	a             *Agent
	svc, endpoint string
	once          sync.Once

	done     doneBody // reqHold.onDone's wrapper of this body, in its allocation
	doneUsed bool
}

func (b *grpcStatusBody) UpstreamEnded() bool { return upstreamEnded(b.ReadCloser) }

func (b *grpcStatusBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.once.Do(func() {
			code := b.resp.Trailer.Get("Grpc-Status")
			if code == "" {
				code = httpproxy.ResponseField(b.resp, "Grpc-Status")
			}
			if code == "" {
				code = "unknown"
			}
			b.a.grpcCounter(b.svc, b.endpoint, code).Inc()
		})
	}
	return n, err
}

// grpcCounterKey names one fogmesh_grpc_responses_total series.
type grpcCounterKey struct{ svc, endpoint, code string }

// grpcCounter returns the counter of gRPC responses of an endpoint with a
// status. The series are cached, so a call costs no formatting; a status
// that is no gRPC code (an upstream may send anything) is looked up
// without caching, so the cache stays bounded by endpoints × 18.
func (a *Agent) grpcCounter(svc, endpoint, code string) *metrics.Counter {
	k := grpcCounterKey{svc, endpoint, code}
	if c, ok := a.grpcCounters.Load(k); ok {
		return c.(*metrics.Counter)
	}
	c := a.cfg.Metrics.GetOrCreateCounter(fmt.Sprintf(`fogmesh_grpc_responses_total{service=%q,endpoint=%q,grpc_status=%q}`, svc, endpoint, code))
	if n, err := strconv.Atoi(code); code == "unknown" || err == nil && n >= 0 && n <= 16 && strconv.Itoa(n) == code {
		a.grpcCounters.Store(k, c)
	}
	return c
}
