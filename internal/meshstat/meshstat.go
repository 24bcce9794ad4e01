// Package meshstat turns two scrapes of the agents' /metrics into golden
// signals: request rate, success ratio and latency percentiles per
// destination service and per edge (source node → destination service
// on a node), as `fogmesh stat`/`top` print them and the web UI draws
// them. Pure: the caller scrapes; the package only subtracts and sorts.
//
// It reads fogmesh_http_requests_total (label code_class: 2xx…5xx or
// "error" for no response) and fogmesh_http_request_duration_seconds
// buckets, both VictoriaMetrics vmrange buckets and Prometheus le buckets;
// source_service and path label an edge where the agent sets them.
package meshstat

import (
	"cmp"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/fogmesh/fogmesh/internal/promtext"
)

// Metric names read from the agents.
const (
	RequestsMetric = "fogmesh_http_requests_total"
	DurationMetric = "fogmesh_http_request_duration_seconds"
)

// Scrape is one node's /metrics at a moment.
type Scrape struct {
	At      time.Time
	Samples []promtext.Sample
}

// Key names a row: a destination service alone (per-service rows) or an
// edge (source node → service on a destination node).
type Key struct {
	Service       string `json:"service"`
	SourceService string `json:"sourceService,omitempty"`
	SourceNode    string `json:"sourceNode,omitempty"`
	SourceSite    string `json:"sourceSite,omitempty"`
	Node          string `json:"node,omitempty"`
	Site          string `json:"site,omitempty"`
	Tier          string `json:"tier,omitempty"`
	// Path is how requests reached the node (label path: same_node,
	// same_site, same_region, cross_region, relayed), where agents label it.
	Path string `json:"path,omitempty"`
}

// Row is the golden signals of one key over the window between scrapes.
type Row struct {
	Key
	Requests float64 `json:"requests"` // in the window
	RPS      float64 `json:"rps"`
	// Success is the share of requests answered with a status below 500
	// (NaN with no request; JSON carries -1 then, see Clean).
	Success float64 `json:"success"`
	// Percentiles of the latency in seconds (NaN: no sample).
	P50 float64 `json:"p50"`
	P95 float64 `json:"p95"`
	P99 float64 `json:"p99"`
	// Window is the seconds the rate is over.
	Window float64 `json:"window"`

	failed  float64
	buckets map[bucket]float64
}

type bucket struct {
	lo, hi float64
	le     bool // Prometheus cumulative bucket with upper bound hi
}

// Compute returns per-service and per-edge rows from two scrapes of each
// node (by node name); a node missing from prev counts from zero only if
// it is in cur with an older start, i.e. it is skipped: a rate needs two
// scrapes. Rows are sorted by service, then source and node.
func Compute(prev, cur map[string]Scrape) (services, edges []Row) {
	svc := map[Key]*Row{}
	edge := map[Key]*Row{}
	for node, c := range cur {
		p, ok := prev[node]
		if !ok {
			continue
		}
		window := c.At.Sub(p.At).Seconds()
		if window <= 0 {
			continue
		}
		old := index(p.Samples)
		for _, s := range c.Samples {
			if !isCount(s.Value) {
				continue
			}
			name, isReq := s.Name, s.Name == RequestsMetric
			var bk bucket
			isBucket := false
			switch {
			case isReq:
			case name == DurationMetric+"_bucket":
				var ok bool
				if bk, ok = bucketOf(s.Labels); !ok {
					continue
				}
				isBucket = true
			default:
				continue
			}
			d := s.Value - old[seriesID(s)]
			if d < 0 { // counter reset: the agent restarted
				d = s.Value
			}
			ek := keyOf(s.Labels)
			sk := Key{Service: ek.Service}
			for _, m := range []struct {
				rows map[Key]*Row
				k    Key
			}{{svc, sk}, {edge, ek}} {
				r := m.rows[m.k]
				if r == nil {
					r = &Row{Key: m.k, buckets: map[bucket]float64{}}
					m.rows[m.k] = r
				}
				r.Window = max(r.Window, window)
				switch {
				case isReq:
					r.Requests += d
					r.RPS += d / window
					if cc := s.Labels["code_class"]; cc == "5xx" || cc == "error" {
						r.failed += d
					}
				case isBucket:
					r.buckets[bk] += d
				}
			}
		}
	}
	return finish(svc), finish(edge)
}

func finish(m map[Key]*Row) []Row {
	out := make([]Row, 0, len(m))
	for _, r := range m {
		r.Success = math.NaN()
		if r.Requests > 0 {
			r.Success = 1 - r.failed/r.Requests
		}
		r.P50, r.P95, r.P99 = quantile(r.buckets, 0.50), quantile(r.buckets, 0.95), quantile(r.buckets, 0.99)
		r.buckets = nil
		out = append(out, *r)
	}
	slices.SortFunc(out, func(a, b Row) int {
		return cmp.Or(strings.Compare(a.Service, b.Service), strings.Compare(a.SourceService, b.SourceService),
			strings.Compare(a.SourceNode, b.SourceNode), strings.Compare(a.Node, b.Node), strings.Compare(a.Tier, b.Tier))
	})
	return out
}

// keyOf is the edge a request series belongs to.
func keyOf(l map[string]string) Key {
	return Key{Service: l["service"], SourceService: l["source_service"], SourceNode: l["source_node"],
		SourceSite: l["source_site"], Node: l["node"], Site: l["site"], Tier: l["tier"], Path: l["path"]}
}

// seriesID identifies a series across scrapes.
func seriesID(s promtext.Sample) string {
	keys := make([]string, 0, len(s.Labels))
	for k := range s.Labels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	b.WriteString(s.Name)
	for _, k := range keys {
		b.WriteString("\x00" + k + "=" + s.Labels[k])
	}
	return b.String()
}

// maxCount bounds a counter read from a scrape: past 2^53 a float64 no
// longer counts by one, and sums of up to promtext.MaxSamples such counts
// stay finite.
const maxCount = 1 << 53

// isCount reports whether v can be a counter's value: a scrape comes
// from another program, and a negative, NaN, infinite or huge value
// would make rates and ratios of every row it adds to meaningless.
func isCount(v float64) bool { return v >= 0 && v <= maxCount }

func index(ss []promtext.Sample) map[string]float64 {
	m := make(map[string]float64, len(ss))
	for _, s := range ss {
		if (s.Name == RequestsMetric || s.Name == DurationMetric+"_bucket") && isCount(s.Value) {
			m[seriesID(s)] = s.Value
		}
	}
	return m
}

// bucketOf reads a vmrange ("1.000e-03...1.136e-03") or le bucket. Its
// bounds are durations: not negative, and finite but for an upper bound
// +Inf (the last bucket), whose requests are reported at its lower bound.
func bucketOf(l map[string]string) (bucket, bool) {
	if vr, ok := l["vmrange"]; ok {
		lo, hi, ok := strings.Cut(vr, "...")
		if !ok {
			return bucket{}, false
		}
		a, err1 := strconv.ParseFloat(lo, 64)
		b, err2 := strconv.ParseFloat(hi, 64)
		if err1 != nil || err2 != nil || !(a >= 0) || math.IsInf(a, 0) || !(b >= a) {
			return bucket{}, false
		}
		return bucket{lo: a, hi: b}, true
	}
	if le, ok := l["le"]; ok {
		v, err := strconv.ParseFloat(le, 64)
		if err != nil || !(v >= 0) {
			return bucket{}, false
		}
		return bucket{hi: v, le: true}, true
	}
	return bucket{}, false
}

// quantile interpolates linearly within the bucket holding the q-th
// request. Cumulative le buckets are turned into ranges first.
func quantile(m map[bucket]float64, q float64) float64 {
	type rng struct{ lo, hi, n float64 }
	var rs []rng
	var les []bucket
	for b, n := range m {
		switch {
		case b.le:
			les = append(les, b)
		case n > 0 && math.IsInf(b.hi, 1):
			rs = append(rs, rng{b.lo, b.lo, n}) // beyond the last bound: report it
		case n > 0:
			rs = append(rs, rng{b.lo, b.hi, n})
		}
	}
	slices.SortFunc(les, func(a, b bucket) int { return cmp.Compare(a.hi, b.hi) })
	prevHi, prevN := 0.0, 0.0
	for _, b := range les {
		n := m[b] - prevN
		if n > 0 {
			hi := b.hi
			if math.IsInf(hi, 1) {
				hi = prevHi // beyond the last bound: report the last bound
			}
			rs = append(rs, rng{prevHi, hi, n})
		}
		prevHi, prevN = b.hi, m[b]
	}
	slices.SortFunc(rs, func(a, b rng) int { return cmp.Or(cmp.Compare(a.hi, b.hi), cmp.Compare(a.lo, b.lo)) })
	// Ranges that overlap (a scrape's buckets are another program's) are
	// cut to start where the one before ends, so that a higher quantile is
	// never a lower duration.
	for i := 1; i < len(rs); i++ {
		rs[i].lo = max(rs[i].lo, rs[i-1].hi)
	}
	total := 0.0
	for _, r := range rs {
		total += r.n
	}
	if total == 0 {
		return math.NaN()
	}
	want, seen := q*total, 0.0
	for _, r := range rs {
		if seen+r.n >= want {
			return r.lo + (r.hi-r.lo)*(want-seen)/r.n
		}
		seen += r.n
	}
	return rs[len(rs)-1].hi
}

// Clean replaces NaN (no data) with -1 so rows encode as JSON.
func Clean(rows []Row) []Row {
	for i := range rows {
		for _, f := range []*float64{&rows[i].Success, &rows[i].P50, &rows[i].P95, &rows[i].P99} {
			if math.IsNaN(*f) {
				*f = -1
			}
		}
	}
	return rows
}
