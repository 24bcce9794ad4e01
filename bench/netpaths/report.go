package main

import (
	"fmt"
	"runtime"
	"slices"
	"strings"
	"time"
)

// median of the successful samples' field; ok is false when none
// succeeded.
func median(ss []sample, f func(sample) float64) (float64, bool) {
	var v []float64
	for _, s := range ss {
		if s.err == nil {
			v = append(v, f(s))
		}
	}
	if len(v) == 0 {
		return 0, false
	}
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2], true
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2, true
}

func perRound(ss []sample, f func(sample) string) string {
	var out []string
	for _, s := range ss {
		if s.err != nil {
			out = append(out, "fail")
			continue
		}
		out = append(out, f(s))
	}
	return strings.Join(out, " / ")
}

func ms(d float64) string { return fmt.Sprintf("%.3f", d/1e6) }

func (r *results) markdown(o options) string {
	var w strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&w, format, args...) }
	p("# netpaths: issue 12 paths (direct, punched, relayed over TCP and over UDP)\n\n")
	p("- date: %s UTC; %d rounds, engines interleaved; %s, %d CPUs, %s\n", r.started.UTC().Format("2006-01-02 15:04"), o.rounds, runtime.GOOS+"/"+runtime.GOARCH, runtime.NumCPU(), runtime.Version())
	p("- load average (1, 5, 15 min): %s at the start, %s at the end\n", r.loadStart, r.loadEnd)
	p("- bulk: one stream into a sink workload for %s; latency: %d sequential %d-byte request/response round trips on one stream to an echo workload\n", o.bulk, o.n, o.size)
	p("- punched path: %s\n", r.punchInfo)
	if r.udpInfo != "" {
		p("- relayed-udp: %s; datagrams dropped by the channels' receive queues over the run: %s\n", r.udpInfo, r.udpDropped)
	}
	p("- relay: `fogmesh relay` as a child process in relay 1's namespace (pid %d), `-bytes-per-second -1` (no per-node rate limit)\n\n", r.relayPID)
	for _, pa := range r.paths {
		p("- %s: %s\n", pa.name, pa.desc)
	}
	p("\n| path | Gbit/s (median) | per round | ×direct | p50 ms | p99 ms | p50 ×direct | p99 ×direct | cores busy in bulk: bench / relay | cores per Gbit/s: bench / relay |\n")
	p("|---|---|---|---|---|---|---|---|---|---|\n")
	gbps := func(s sample) float64 { return s.gbps }
	p50 := func(s sample) float64 { return float64(s.p50) }
	p99 := func(s sample) float64 { return float64(s.p99) }
	dg, dok := median(r.samples["direct"], gbps)
	d50, _ := median(r.samples["direct"], p50)
	d99, _ := median(r.samples["direct"], p99)
	ratio := func(v, base float64, ok bool) string {
		if !ok || base == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f", v/base)
	}
	for _, pa := range r.paths {
		ss := r.samples[pa.name]
		g, ok := median(ss, gbps)
		l50, _ := median(ss, p50)
		l99, _ := median(ss, p99)
		if !ok {
			p("| %s | fail | %s | - | - | - | - | - | - | - |\n", pa.name, perRound(ss, nil))
			continue
		}
		sc, _ := median(ss, func(s sample) float64 { return s.selfCores })
		rc, _ := median(ss, func(s sample) float64 { return s.relayCores })
		p("| %s | %.3f | %s | %s | %s | %s | %s | %s | %.2f / %.2f | %.2f / %.2f |\n", pa.name, g,
			perRound(ss, func(s sample) string { return fmt.Sprintf("%.3f", s.gbps) }),
			ratio(g, dg, dok), ms(l50), ms(l99), ratio(l50, d50, dok), ratio(l99, d99, dok), sc, rc, sc/g, rc/g)
	}
	for _, pa := range r.paths {
		for i, s := range r.samples[pa.name] {
			if s.err != nil {
				p("\n%s round %d failed: %v\n", pa.name, i+1, s.err)
			}
		}
	}
	p("\n| relay | figure |\n|---|---|\n")
	for _, name := range []string{"relayed", "relayed-udp"} {
		ss := r.samples[name]
		cpu, cok := median(ss, func(s sample) float64 { return s.relayCPU })
		if cok {
			p("| CPU per Gbit/s (%s bulk; CPU-seconds per Gbit = cores busy at 1 Gbit/s), median | %.2f (rounds: %s) |\n", name, cpu,
				perRound(ss, func(s sample) string { return fmt.Sprintf("%.2f", s.relayCPU) }))
		} else if len(ss) > 0 {
			p("| CPU per Gbit/s (%s) | not measured |\n", name)
		}
	}
	for _, h := range r.holds {
		status := ""
		if h.err != nil {
			status = " (FAILED: " + h.err.Error() + ")"
		}
		p("| VmRSS holding %s: before → during%s | %.1f → %.1f MiB (+%.1f MiB, %.1f KiB each; %d up in %s) |\n",
			h.what, status, float64(h.before.rssKB)/1024, float64(h.during.rssKB)/1024,
			float64(h.during.rssKB-h.before.rssKB)/1024, perSession(h.during.rssKB-h.before.rssKB, h.n), h.n, h.took.Round(time.Millisecond))
		p("| relay goroutines / Go heap in use, same | %.0f → %.0f / %.1f → %.1f MiB |\n",
			h.before.goroutines, h.during.goroutines, h.before.heapInuse/(1<<20), h.during.heapInuse/(1<<20))
	}
	r.aims(p)
	return w.String()
}

// aims judges issue 12's benchmark aims on this run's medians. "Flat"
// is read as: the relay's RSS grows by less than 10% of its idle RSS.
func (r *results) aims(p func(string, ...any)) {
	verdict := func(ok bool) string {
		if ok {
			return "**met**"
		}
		return "**missed**"
	}
	gbps := func(s sample) float64 { return s.gbps }
	pg, pok := median(r.samples["punched"], gbps)
	p("\n| aim (issue 12) | this run | verdict |\n|---|---|---|\n")
	if pok {
		p("| punched QUIC ≥ 1 Gbit/s on one flow | %.3f Gbit/s | %s |\n", pg, verdict(pg >= 1))
	}
	for _, name := range []string{"relayed", "relayed-udp"} {
		rg, rok := median(r.samples[name], gbps)
		if pok && rok {
			p("| %s ≥ half of punched | %.3f / %.3f = %.2f | %s |\n", name, rg, pg, rg/pg, verdict(rg >= pg/2))
		}
	}
	for _, h := range r.holds {
		grow := h.during.rssKB - h.before.rssKB
		p("| relay RSS flat (growth < 10%% of idle) with %s | +%.1f MiB on %.1f MiB (%+.0f%%) | %s |\n", h.what,
			float64(grow)/1024, float64(h.before.rssKB)/1024, 100*float64(grow)/float64(max(h.before.rssKB, 1)),
			verdict(h.err == nil && float64(grow) < 0.1*float64(h.before.rssKB)))
	}
}

func perSession(kb int64, n int) float64 {
	if n == 0 {
		return 0
	}
	return float64(kb) / float64(n)
}
