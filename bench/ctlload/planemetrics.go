package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"
)

// The control plane's own histograms of its write path (/metrics,
// VictoriaMetrics vmrange buckets): read at the start and the end of the
// steady phase, their difference gives the phase's quantiles as the
// control plane measured them, without the tool's own delays.

// histogram is bucket upper bound (seconds) -> count, by metric name
// (labels other than vmrange kept in the name).
type histograms map[string]map[float64]uint64

// metricsText reads the control plane's /metrics.
func (ad *admin) metricsText(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ad.base+"/metrics", nil)
	if err != nil {
		return "", err
	}
	if ad.token != "" {
		req.Header.Set("Authorization", "Bearer "+ad.token)
	}
	resp, err := ad.c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	return string(b), nil
}

// parseHistograms reads the vmrange buckets of the metrics named with prefix.
func parseHistograms(text, prefix string) histograms {
	out := histograms{}
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, prefix) || !strings.Contains(line, "_bucket{") {
			continue
		}
		name, rest, _ := strings.Cut(line, "_bucket{")
		labels, val, ok := strings.Cut(rest, "} ")
		if !ok {
			continue
		}
		var other []string
		var upper float64 = -1
		for _, l := range strings.Split(labels, ",") {
			k, v, _ := strings.Cut(l, "=")
			v = strings.Trim(v, `"`)
			if k == "vmrange" {
				_, hi, _ := strings.Cut(v, "...")
				if f, err := strconv.ParseFloat(hi, 64); err == nil {
					upper = f
				}
				continue
			}
			other = append(other, l)
		}
		n, err := strconv.ParseUint(val, 10, 64)
		if upper < 0 || err != nil {
			continue
		}
		if len(other) > 0 {
			name += "{" + strings.Join(other, ",") + "}"
		}
		if out[name] == nil {
			out[name] = map[float64]uint64{}
		}
		out[name][upper] += n
	}
	return out
}

// quantiles returns the count and the q-quantiles (bucket upper bounds) of
// name in end minus start.
func (end histograms) quantiles(start histograms, name string, qs ...float64) (uint64, []time.Duration) {
	type bucket struct {
		upper float64
		n     uint64
	}
	var bs []bucket
	var total uint64
	for up, n := range end[name] {
		n -= min(n, start[name][up])
		if n > 0 {
			bs = append(bs, bucket{up, n})
			total += n
		}
	}
	sort.Slice(bs, func(i, j int) bool { return bs[i].upper < bs[j].upper })
	out := make([]time.Duration, len(qs))
	for i, q := range qs {
		want := uint64(q*float64(total) + 0.5)
		var cum uint64
		for _, b := range bs {
			cum += b.n
			if cum >= max(want, 1) {
				out[i] = time.Duration(b.upper * float64(time.Second))
				break
			}
		}
	}
	return total, out
}

// planeQ is one histogram's count and quantiles over the steady phase.
type planeQ struct {
	N        uint64
	P50, P99 time.Duration
}

// planeMetrics are the histograms reported, in order.
var planeMetrics = []string{
	"fogmesh_control_push_seconds",
	`fogmesh_control_admin_write_seconds{phase="total"}`,
	`fogmesh_control_admin_write_seconds{phase="store"}`,
	`fogmesh_control_admin_write_seconds{phase="audit"}`,
	`fogmesh_control_admin_write_seconds{phase="answer"}`,
}

// planeQuantiles compares two /metrics texts (a control plane without
// these histograms gives none).
func planeQuantiles(before, after string) map[string]planeQ {
	b, a := parseHistograms(before, "fogmesh_control_"), parseHistograms(after, "fogmesh_control_")
	out := map[string]planeQ{}
	for _, name := range planeMetrics {
		n, q := a.quantiles(b, name, 0.5, 0.99)
		if n > 0 {
			out[name] = planeQ{n, q[0], q[1]}
		}
	}
	return out
}

func formatPlane(m map[string]planeQ) string {
	var parts []string
	for _, name := range planeMetrics {
		if q, ok := m[name]; ok {
			short := strings.TrimPrefix(strings.TrimPrefix(name, "fogmesh_control_"), "admin_write_seconds")
			parts = append(parts, fmt.Sprintf("%s n=%d p50 %v p99 %v", short, q.N, q.P50.Round(10*time.Microsecond), q.P99.Round(10*time.Microsecond)))
		}
	}
	return strings.Join(parts, "; ")
}
