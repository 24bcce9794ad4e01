package main

import (
	"encoding/json"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/prometheus/promql/parser"

	"github.com/fogmesh/fogmesh/internal/promtext"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

const dashboardFile = "../../deploy/grafana/fogmesh.json"

// dashboardQueries returns every PromQL expression of the dashboard (its
// panels' targets, rows' panels too) and the metric names its template
// variables read (label_values(METRIC, LABEL)).
func dashboardQueries(t *testing.T) (exprs []string, varMetrics []string) {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels     []dashPanel `json:"panels"`
		Templating struct {
			List []struct {
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	var walk func([]dashPanel)
	walk = func(ps []dashPanel) {
		for _, p := range ps {
			for _, tg := range p.Targets {
				if tg.Expr == "" {
					t.Errorf("panel %q: a target without expr", p.Title)
				}
				exprs = append(exprs, tg.Expr)
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	lv := regexp.MustCompile(`label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)`)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if json.Unmarshal(v.Query, &q) != nil {
			json.Unmarshal(v.Query, &q.Query)
		}
		m := lv.FindStringSubmatch(q.Query)
		if m == nil {
			t.Errorf("template variable query %q: not label_values(METRIC, LABEL)", q.Query)
			continue
		}
		varMetrics = append(varMetrics, m[1])
	}
	return exprs, varMetrics
}

type dashPanel struct {
	Title   string      `json:"title"`
	Panels  []dashPanel `json:"panels"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
}

// grafanaVars replaces Grafana's variables with what they expand to, so
// the Prometheus parser reads the expression as Prometheus would.
var grafanaVars = strings.NewReplacer("$__rate_interval", "1m", "$__interval", "1m", "$__range", "1h", "$service", ".*")

// selector is one metric a query reads and the labels it names.
type selector struct {
	metric string
	labels []string // in matchers and in by/without of an enclosing aggregation
}

// selectors parses expr with the Prometheus parser and returns each
// vector selector's metric, with the label names its matchers use and
// those of the aggregations around it.
func selectors(t *testing.T, expr string) []selector {
	t.Helper()
	e, err := parser.NewParser(parser.Options{}).ParseExpr(grafanaVars.Replace(expr))
	if err != nil {
		t.Errorf("query %q: %v", expr, err)
		return nil
	}
	var out []selector
	parser.Inspect(e, func(n parser.Node, path []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		sel := selector{metric: vs.Name}
		for _, m := range vs.LabelMatchers {
			if m.Name != "__name__" {
				sel.labels = append(sel.labels, m.Name)
			}
		}
		for _, p := range path {
			if a, ok := p.(*parser.AggregateExpr); ok && !a.Without {
				sel.labels = append(sel.labels, a.Grouping...)
			}
		}
		if sel.metric == "" {
			t.Errorf("query %q: a selector without a metric name", expr)
		}
		out = append(out, sel)
		return nil
	})
	return out
}

// TestGrafanaDashboardMetrics: every PromQL query of
// deploy/grafana/fogmesh.json parses (Prometheus's own parser), and every
// metric it reads is served, after some traffic, by the /metrics of a
// running mesh (the demo topology's agents and control plane), with every
// label the query matches or groups by: a renamed metric or label fails
// here.
func TestGrafanaDashboardMetrics(t *testing.T) {
	exprs, varMetrics := dashboardQueries(t)
	if len(exprs) < 10 {
		t.Fatalf("only %d queries in the dashboard", len(exprs))
	}
	m := startDemoMesh(t)
	stop := make(chan struct{})
	wait := m.traffic(stop)
	// Served: metric name → label names, from every agent and the control plane.
	served := map[string]map[string]bool{}
	scrape := func(url string, c *http.Client, token string) {
		req, _ := http.NewRequest("GET", url, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		ss, err := promtext.Parse(resp.Body)
		if err != nil {
			t.Fatalf("%s: %v", url, err)
		}
		for _, s := range ss {
			if served[s.Name] == nil {
				served[s.Name] = map[string]bool{}
			}
			for l := range s.Labels {
				served[s.Name][l] = true
			}
		}
	}
	// Client-side request metrics on every agent, and the destination
	// side's on some agent (a request another node's agent sent it over
	// the mesh): the first requests may all have gone to the local
	// endpoint.
	testenv.WaitFor(t, 30*time.Second, "request metrics on every agent, and a destination's", func() bool {
		served := false
		for _, a := range m.agents {
			resp, err := http.Get("http://" + a.addrs["admin"] + "/metrics")
			if err != nil {
				return false
			}
			ss, err := promtext.Parse(resp.Body)
			resp.Body.Close()
			if err != nil || !slices.ContainsFunc(ss, func(s promtext.Sample) bool { return s.Name == "fogmesh_http_requests_total" && s.Value > 0 }) {
				return false
			}
			served = served || slices.ContainsFunc(ss, func(s promtext.Sample) bool { return s.Name == "fogmesh_http_server_requests_total" && s.Value > 0 })
		}
		return served
	})
	close(stop)
	wait()
	for _, a := range m.agents {
		scrape("http://"+a.addrs["admin"]+"/metrics", http.DefaultClient, "")
	}
	scrape(m.admin[1]+"/metrics", uiClient(t, m.admin[3]), m.admin[5])
	// Labels Prometheus adds to every series of a target.
	targetLabels := map[string]bool{"instance": true, "job": true}
	checked := 0
	for _, e := range exprs {
		for _, s := range selectors(t, e) {
			labels, ok := served[s.metric]
			if !ok {
				t.Errorf("query %q reads %s, which the mesh does not serve", e, s.metric)
				continue
			}
			for _, l := range s.labels {
				if l == "le" && strings.HasSuffix(s.metric, "_bucket") && labels["vmrange"] {
					// A histogram's bucket bound: the agent on main writes
					// VictoriaMetrics vmrange buckets, and the golden metrics
					// of #16 (branch h/otel) Prometheus le buckets, which
					// the dashboard's histogram_quantile needs.
					continue
				}
				if !labels[l] && !targetLabels[l] {
					t.Errorf("query %q: %s has no label %q (has %v)", e, s.metric, l, sortedKeys(labels))
				}
			}
			checked++
		}
	}
	for _, name := range varMetrics {
		if _, ok := served[name]; !ok {
			t.Errorf("template variable reads %s, which the mesh does not serve", name)
		}
	}
	t.Logf("%d queries, %d selectors checked against %d served metric names", len(exprs), checked, len(served))
}

// TestDashboardSelectorsCatchARename: the extraction the test above
// relies on sees metric names and labels inside functions, aggregations
// and binary expressions (a check that would pass any dashboard is no check).
func TestDashboardSelectorsCatchARename(t *testing.T) {
	got := selectors(t, `sum by (service) (rate(fogmesh_http_requests_total{code_class!~"5xx"}[$__rate_interval])) / on() group_left max(fogmesh_renamed_total)`)
	if len(got) != 2 || got[0].metric != "fogmesh_http_requests_total" || got[1].metric != "fogmesh_renamed_total" ||
		!slices.Equal(got[0].labels, []string{"code_class", "service"}) {
		t.Fatalf("selectors %+v", got)
	}
}
