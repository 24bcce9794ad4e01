package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/fogmesh/fogmesh/internal/cli"
	"github.com/fogmesh/fogmesh/internal/meshstat"
)

// fogmesh stat prints each service's request rate, success ratio and
// latency percentiles once, from two scrapes of every agent's /metrics
// -interval apart; fogmesh top refreshes the same table every -interval
// until ctrl-C or -iterations.

func runStat(cmd string, args []string) error {
	fs := flag.NewFlagSet("fogmesh "+cmd, flag.ContinueOnError)
	server := serverFlag(fs)
	agents := fs.String("agents", "", "agent APIs to scrape (URL or NAME=URL, comma-separated; default: each ready node's registered adminAddress, from the control plane)")
	interval := fs.Duration("interval", 2*time.Second, "time between scrapes: the window rates are over")
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
	targets, err := agentTargets(ctx, strings.TrimRight(*server, "/"), *agents)
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
			fmt.Printf("fogmesh top — %d agents, every %s (ctrl-C stops)\n\n", len(cur), *interval)
		}
		if err := printStats(os.Stdout, *out, services, edgeRows, *edges, errs); err != nil {
			return err
		}
		if cmd == "stat" || (*iterations > 0 && i >= *iterations) || ctx.Err() != nil {
			return nil
		}
		prev = cur
	}
}

func printStats(w io.Writer, out string, services, edges []meshstat.Row, withEdges bool, errs map[string]error) error {
	if out == "json" {
		m := map[string]any{"services": meshstat.Clean(services)}
		if withEdges {
			m["edges"] = meshstat.Clean(edges)
		}
		if len(errs) > 0 {
			e := map[string]string{}
			for n, err := range errs {
				e[n] = err.Error()
			}
			m["unreachable"] = e
		}
		b, err := json.MarshalIndent(m, "", "  ")
		if err != nil {
			return err
		}
		fmt.Fprintln(w, string(b))
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tRPS\tSUCCESS\tP50\tP95\tP99\tREQUESTS")
	for _, r := range services {
		fmt.Fprintf(tw, "%s\t%.2f\t%s\t%s\t%s\t%s\t%.0f\n", r.Service, r.RPS, pct(r.Success), ms(r.P50), ms(r.P95), ms(r.P99), r.Requests)
	}
	if len(services) == 0 {
		fmt.Fprintln(tw, "(no HTTP requests through the mesh yet)\t\t\t\t\t\t")
	}
	if withEdges && len(edges) > 0 {
		fmt.Fprintln(tw, "\t\t\t\t\t\t\t")
		fmt.Fprintln(tw, "SOURCE\tSERVICE\tDESTINATION\tTIER\tPATH\tRPS\tSUCCESS\tP99")
		for _, r := range edges {
			src := r.SourceNode
			if r.SourceService != "" {
				src = r.SourceService + "@" + r.SourceNode
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%.2f\t%s\t%s\n", src, r.Service, r.Node, r.Tier, orDash(r.Path), r.RPS, pct(r.Success), ms(r.P99))
		}
	}
	for _, n := range sortedKeys(errs) {
		fmt.Fprintf(tw, "(%s unreachable: %v)\t\t\t\t\t\t\n", n, errs[n])
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
