// Command ctlload puts a fogmesh control plane under the load of many
// agents (issue 13, "Scale"): it starts `fogmesh control` as a child
// process on a fresh state dir, creates services and endpoints through
// the admin API, connects N simulated agents from this one process (the
// agent's sync protocol over mutual TLS with node certificates signed by
// the control plane's CA), changes endpoints at a steady rate and measures
// for each change the time until every agent applied it, the control
// plane's CPU and RSS (from /proc), and the time until every agent is
// resubscribed and in sync after the control plane is killed and
// restarted on the same state dir. Loopback only; every phase is bounded.
//
//	go run ./bench/ctlload -fogmesh bin/fogmesh -n 1000 -m 5000
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"
)

func main() {
	var (
		cfg     config
		keep    = flag.Bool("keep", false, "keep the work dir (state, control plane logs)")
		timeout = flag.Duration("timeout", 10*time.Minute, "bound of the whole run")
		jsonOut = flag.String("json", "", "append the result as one JSON line to this file")
		cpuprof = flag.String("cpuprofile", "", "write this process's CPU profile here (with -inprocess it includes the control plane)")
		inproc  = flag.Bool("inprocess", false, "run the control plane in this process (its CPU and RSS are then not measured)")
		ctlMem  = flag.String("control-memlimit", "", "GOMEMLIMIT for the child control plane only (e.g. 900MiB; the load tool itself is not limited)")
		ctlArgs = flag.String("control-flags", "", "more flags for the control plane, space separated (e.g. -debug-contention)")
	)
	flag.IntVar(&cfg.N, "n", 100, "simulated agents")
	flag.IntVar(&cfg.M, "m", 0, "endpoints (default 5×n, at most 50,000)")
	flag.IntVar(&cfg.Services, "services", 0, "services the endpoints are spread over (default m/10)")
	flag.Float64Var(&cfg.Rate, "rate", 100, "endpoint changes per second in the steady phase")
	flag.DurationVar(&cfg.Duration, "duration", 30*time.Second, "length of the steady phase")
	flag.DurationVar(&cfg.Jitter, "jitter", 2*time.Second, "reconnect backoff: the k-th retry in a row waits uniform [0, jitter·2^k), at most 15s")
	flag.DurationVar(&cfg.Heartbeat, "heartbeat", 5*time.Second, "agent heartbeat interval (the control plane's -heartbeat-interval)")
	flag.BoolVar(&cfg.Insecure, "insecure", false, "plaintext sync and admin API (default: mutual TLS)")
	flag.StringVar(&cfg.Bin, "fogmesh", "bin/fogmesh", "the fogmesh binary to run as the control plane")
	flag.BoolVar(&cfg.Restart, "restart", true, "kill and restart the control plane and time the resync")
	flag.BoolVar(&cfg.Verify, "verify", false, "keep every agent's objects and compare them with the control plane's at the end (memory: n×(n+m) entries)")
	flag.IntVar(&cfg.Scope, "scope", 0, "services each agent subscribes to (0: every agent gets everything)")
	flag.IntVar(&cfg.Dialers, "dialers", 16, "first connections in flight at once (until their first update is applied)")
	flag.DurationVar(&cfg.PhaseTimeout, "phase-timeout", 5*time.Minute, "bound of each phase's wait")
	flag.Int64Var(&cfg.MaxRSS, "max-rss", 4<<30, "abort when the control plane or this process exceeds this many bytes of RSS")
	flag.Parse()
	cfg.ControlFlags = strings.Fields(*ctlArgs)
	cfg.ControlMemLimit = *ctlMem
	if cfg.M == 0 {
		cfg.M = min(5*cfg.N, 50000)
	}
	if cfg.Services == 0 {
		cfg.Services = max(1, cfg.M/10)
	}
	if cfg.N <= 0 || cfg.M <= 0 || cfg.Rate <= 0 || cfg.Duration <= 0 {
		fmt.Fprintln(os.Stderr, "ctlload: -n, -m, -rate and -duration must be positive")
		os.Exit(2)
	}
	if *inproc {
		cfg.Bin = ""
	} else if _, err := os.Stat(cfg.Bin); err != nil {
		fmt.Fprintf(os.Stderr, "ctlload: -fogmesh: %v (make build, or make bench-control)\n", err)
		os.Exit(2)
	}
	if err := raiseNoFile(cfg.N + 1024); err != nil { // each process holds one end of every stream
		fmt.Fprintln(os.Stderr, "ctlload:", err)
		os.Exit(1)
	}
	dir, err := os.MkdirTemp("", "ctlload-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "ctlload:", err)
		os.Exit(1)
	}
	if !*keep {
		defer os.RemoveAll(dir)
	}
	cfg.Dir, cfg.Log = dir, os.Stderr
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	fmt.Fprintf(os.Stderr, "ctlload: n=%d m=%d services=%d rate=%.0f/s for %v, heartbeat %v, jitter %v, secure=%v, work dir %s\n",
		cfg.N, cfg.M, cfg.Services, cfg.Rate, cfg.Duration, cfg.Heartbeat, cfg.Jitter, !cfg.Insecure, dir)
	if *cpuprof != "" {
		f, err := os.Create(*cpuprof)
		if err != nil {
			fmt.Fprintln(os.Stderr, "ctlload:", err)
			os.Exit(1)
		}
		pprof.StartCPUProfile(f)
	}
	res, err := runLoad(ctx, cfg)
	if *cpuprof != "" {
		pprof.StopCPUProfile()
	}
	printResult(res)
	if *jsonOut != "" {
		os.MkdirAll(filepath.Dir(*jsonOut), 0o755)
		if f, ferr := os.OpenFile(*jsonOut, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644); ferr == nil {
			b, _ := json.Marshal(struct {
				result
				Err string `json:",omitempty"`
			}{res, fmt.Sprint(err)})
			f.Write(append(b, '\n'))
			f.Close()
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "ctlload: %v\n", err)
		cancel()
		os.Exit(1)
	}
	if len(res.Faults) > 0 {
		os.Exit(1)
	}
}

func printResult(r result) {
	fmt.Printf("agents %d, endpoints %d, services %d, secure %v\n", r.N, r.M, r.Services, r.Secure)
	fmt.Printf("setup (admin API) %v; initial sync %v (control plane %.2f cores)\n", r.Setup.Round(time.Millisecond), r.InitialSync.Round(time.Millisecond), r.InitialCPU)
	fmt.Printf("steady: %d changes at %.1f/s; change->all subscribed agents (%.1f on average) p50 %v p99 %v max %v; incomplete %d\n",
		r.ChangesSent, r.Rate, r.Reach, r.P50.Round(10*time.Microsecond), r.P99.Round(10*time.Microsecond), r.Max.Round(10*time.Microsecond), r.Incomplete)
	fmt.Printf("admin API answer to a change: p50 %v p99 %v; fan-out (first to last agent) p50 %v p99 %v\n", r.APIP50.Round(10*time.Microsecond), r.APIP99.Round(10*time.Microsecond),
		r.FanoutP50.Round(10*time.Microsecond), r.FanoutP99.Round(10*time.Microsecond))
	if len(r.Plane) > 0 {
		fmt.Printf("control plane's own histograms (bucket upper bounds): %s\n", formatPlane(r.Plane))
	}
	fmt.Printf("control plane: %.2f cores, RSS %.0f MiB (peak %.0f MiB), %d fds, %d threads\n", r.CPU, float64(r.RSS)/(1<<20), float64(r.HWM)/(1<<20), r.Fds, r.Threads)
	if r.Resync > 0 {
		fmt.Printf("restart: all resubscribed %v, all in sync %v after the kill (%.2f cores, RSS %.0f MiB); change after restart delivered %v\n",
			r.Resubscribed.Round(time.Millisecond), r.Resync.Round(time.Millisecond), r.ResyncCPU, float64(r.ResyncRSS)/(1<<20), r.AfterRestartOK)
	}
	for i, f := range r.Faults {
		if i == 20 {
			fmt.Printf("... %d more faults\n", len(r.Faults)-20)
			break
		}
		fmt.Println("FAULT:", f)
	}
}

// raiseNoFile raises the soft RLIMIT_NOFILE to the hard limit (the child
// control plane inherits it) and fails if that is below need.
func raiseNoFile(need int) error {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return err
	}
	if l.Cur < l.Max {
		l.Cur = l.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
			return fmt.Errorf("raise RLIMIT_NOFILE: %w", err)
		}
	}
	if l.Cur < uint64(need) {
		return fmt.Errorf("RLIMIT_NOFILE is %d, this run needs about %d (raise the hard limit)", l.Cur, need)
	}
	return nil
}
