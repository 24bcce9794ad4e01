package agent

import (
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/fogmesh/fogmesh/internal/api"
)

// Per-request metrics of the L7 path: request counts by status class and
// durations per endpoint and route, and a gRPC response's status.

// requestMetrics records one request. code 0 means no response. The
// series of an endpoint and route are looked up once and cached. Labels
// are bounded by endpoints × rule names: no paths, no status codes.
func (a *Agent) requestMetrics(svc, route string, ev *endpointView, code int, d time.Duration) {
	class := 0 // "error"
	if code >= 100 && code < 600 {
		class = code / 100
	}
	k := metricsKey{svc, route, ev.ep.Meta.Name, ev.ep.Spec.Node, ev.tier}
	v, ok := a.reqMetrics.Load(k)
	if !ok {
		labels := fmt.Sprintf(`service=%q,endpoint=%q,node=%q,site=%q,tier=%q,route=%q,source_node=%q,source_site=%q`,
			svc, ev.ep.Meta.Name, ev.ep.Spec.Node, ev.site, ev.tier, route, a.cfg.Node.Name, a.cfg.Node.Site)
		m := &endpointMetrics{duration: a.cfg.Metrics.GetOrCreateHistogram(`fogmesh_http_request_duration_seconds{` + labels + `}`)}
		for c := range m.byClass {
			name := "error"
			if c > 0 {
				name = fmt.Sprintf("%dxx", c)
			}
			m.byClass[c] = a.cfg.Metrics.GetOrCreateCounter(`fogmesh_http_requests_total{` + labels + `,code_class="` + name + `"}`)
		}
		v, _ = a.reqMetrics.LoadOrStore(k, m)
	}
	m := v.(*endpointMetrics)
	m.byClass[class].Inc()
	m.duration.Update(d.Seconds())
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
	svc, route, endpoint, node string
	tier                       Tier
}

// endpointMetrics are one endpoint's request series; byClass[0] counts
// requests without a response, byClass[n] status class nxx.
type endpointMetrics struct {
	byClass  [6]*metrics.Counter
	duration *metrics.Histogram
}

// grpcStatusBody records a gRPC response's status when its body ends: the
// grpc-status trailer, or the header of a trailers-only response.
type grpcStatusBody struct {
	io.ReadCloser
	resp   *http.Response
	record func(code string)
	once   sync.Once
}

func (b *grpcStatusBody) UpstreamEnded() bool { return upstreamEnded(b.ReadCloser) }

func (b *grpcStatusBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.once.Do(func() {
			code := b.resp.Trailer.Get("Grpc-Status")
			if code == "" {
				code = b.resp.Header.Get("Grpc-Status")
			}
			if code == "" {
				code = "unknown"
			}
			b.record(code)
		})
	}
	return n, err
}
