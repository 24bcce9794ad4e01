package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/fogmesh/fogmesh/internal/cli"
	"github.com/fogmesh/fogmesh/internal/control"
	"github.com/fogmesh/fogmesh/internal/meshstat"
)

// fogmesh stat prints each service's request rate, success ratio and
// latency percentiles once; fogmesh top refreshes the same table every
// -interval until ctrl-C or -iterations. By default both read the control
// plane's GET /v1/stats (rates over the agents' last two heartbeats, so
// agents whose admin API is unreachable count too); with -agents they
// scrape those agents' /metrics twice, -interval apart, instead.

func runStat(cmd string, args []string) error {
	fs := flag.NewFlagSet("fogmesh "+cmd, flag.ContinueOnError)
	server := serverFlag(fs)
	agents := fs.String("agents", "", "scrape these agent APIs' /metrics instead of asking the control plane (URL or NAME=URL, comma-separated)")
	interval := fs.Duration("interval", 2*time.Second, "top: time between refreshes; with -agents, also the window rates are over")
	edges := fs.Bool("edges", cmd == "top", "also print each edge: source node → service on a destination node, with its locality tier")
	iterations := fs.Int("iterations", 0, "top: stop after this many refreshes (0: until ctrl-C)")
	out := fs.String("o", "table", "output: table or json")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *out != "table" && *out != "json" {
		return cli.Usagef("%s: -o %q is not table or json", cmd, *out)
	}
	if *interval <= 0 {
		return cli.Usagef("%s: -interval must be positive", cmd)
	}
	ctx, stop := cli.SignalContext()
	defer stop()
	srv := strings.TrimRight(*server, "/")
	if *agents == "" {
		st, err := controlStats(srv)
		if err == nil {
			return statLoop(ctx, cmd, *out, *edges, *interval, *iterations, st, func() (*control.StatsResponse, error) { return controlStats(srv) })
		}
		if !errors.Is(err, errNoStatsEndpoint) {
			return err
		}
		// A control plane older than GET /v1/stats: scrape its nodes'
		// registered agent APIs, as fogmesh did before.
	}
	targets, err := agentTargets(ctx, srv, *agents)
	if err != nil {
		return err
	}
	prev, errs := scrapeAll(ctx, targets)
	if len(prev) == 0 {
		return fmt.Errorf("no agent answered: %v", errs)
	}
	for i := 1; ; i++ {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(*interval):
		}
		cur, errs := scrapeAll(ctx, targets)
		services, edgeRows := meshstat.Compute(prev, cur)
		if cmd == "top" && *out == "table" {
			fmt.Print("\x1b[H\x1b[2J") // home and clear, as top does
			fmt.Printf("fogmesh top — %d agents scraped, every %s (ctrl-C stops)\n\n", len(cur), *interval)
		}
		missing := map[string]string{}
		for n, err := range errs {
			missing[n] = err.Error()
		}
		if err := printStats(os.Stdout, *out, services, edgeRows, *edges, "unreachable", missing); err != nil {
			return err
		}
		if cmd == "stat" || (*iterations > 0 && i >= *iterations) || ctx.Err() != nil {
			return nil
		}
		prev = cur
	}
}

// statLoop prints the control plane's stats: once for stat, every
// interval for top.
func statLoop(ctx context.Context, cmd, out string, edges bool, interval time.Duration, iterations int, st *control.StatsResponse, get func() (*control.StatsResponse, error)) error {
	for i := 1; ; i++ {
		if cmd == "top" && out == "table" {
			fmt.Print("\x1b[H\x1b[2J")
			fmt.Printf("fogmesh top — %d agents reporting in heartbeats, every %s (ctrl-C stops)\n\n", len(st.Nodes), interval)
		}
		if err := printStats(os.Stdout, out, st.Services, st.Edges, edges, "unreported", st.Unreported); err != nil {
			return err
		}
		if cmd == "stat" || (iterations > 0 && i >= iterations) {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(interval):
		}
		var err error
		if st, err = get(); err != nil {
			return err
		}
	}
}

// errNoStatsEndpoint: the control plane predates GET /v1/stats.
var errNoStatsEndpoint = errors.New("control plane without /v1/stats")

func controlStats(server string) (*control.StatsResponse, error) {
	var st control.StatsResponse
	if err := call("GET", server+"/v1/stats", nil, &st); err != nil {
		if strings.Contains(err.Error(), `unknown resource "stats"`) { // GET /v1/{kind} of an older control plane
			return nil, errNoStatsEndpoint
		}
		return nil, err
	}
	return &st, nil
}

// printStats prints the rows; missing names nodes without numbers (node →
// why) under missingKey in JSON.
func printStats(w io.Writer, out string, services, edges []meshstat.Row, withEdges bool, missingKey string, missing map[string]string) error {
	if out == "json" {
		m := map[string]any{"services": meshstat.Clean(services)}
		if withEdges {
			m["edges"] = meshstat.Clean(edges)
		}
		if len(missing) > 0 {
			m[missingKey] = missing
		}
		b, err := json.MarshalIndent(m, "", "  ")
		if err != nil {
			return err
		}
		fmt.Fprintln(w, string(jsonTermSafe(b)))
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tRPS\tSUCCESS\tP50\tP95\tP99\tREQUESTS")
	for _, r := range services {
		fmt.Fprintf(tw, "%s\t%.2f\t%s\t%s\t%s\t%s\t%.0f\n", termSafe(r.Service), r.RPS, pct(r.Success), ms(r.P50), ms(r.P95), ms(r.P99), r.Requests)
	}
	if len(services) == 0 {
		fmt.Fprintln(tw, "(no HTTP requests through the mesh yet)\t\t\t\t\t\t")
	}
	if withEdges && len(edges) > 0 {
		fmt.Fprintln(tw, "\t\t\t\t\t\t\t")
		fmt.Fprintln(tw, "SOURCE\tSERVICE\tDESTINATION\tTIER\tPATH\tRPS\tSUCCESS\tP99")
		for _, r := range edges {
			src := termSafe(r.SourceNode)
			if r.SourceService != "" {
				src = termSafe(r.SourceService) + "@" + src
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%.2f\t%s\t%s\n", src, termSafe(r.Service), termSafe(r.Node), termSafe(r.Tier), termSafe(orDash(r.Path)), r.RPS, pct(r.Success), ms(r.P99))
		}
	}
	for _, n := range sortedKeys(missing) {
		fmt.Fprintf(tw, "(%s %s: %s)\t\t\t\t\t\t\n", termSafe(n), missingKey, termSafe(missing[n]))
	}
	return tw.Flush()
}

func pct(f float64) string {
	if math.IsNaN(f) || f < 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f%%", 100*f)
}

func ms(s float64) string {
	if math.IsNaN(s) || s < 0 {
		return "-"
	}
	return fmt.Sprintf("%.1fms", s*1000)
}
