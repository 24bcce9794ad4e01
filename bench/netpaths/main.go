// Command netpaths measures, in one run, the four paths of issue 12
// between network namespaces with real NAT routers (internal/netlab):
//
//	direct    LAN node 1 → LAN node 2 on their LAN addresses, the mesh
//	          carrier TLS+yamux over TCP (transport.Client/Server)
//	punched   LAN node 1 ↔ site A node over QUIC (transport.QUICClient/
//	          QUICServer) on the UDP socket punch opened through both NATs,
//	          introduced by the relay
//	relayed   site A → site C (no UDP) through `fogmesh relay` on relay 1's
//	          public address: a relayed TCP session carrying TLS+yamux end
//	          to end between the two nodes (the relay sees only ciphertext)
//	relayed-udp
//	          site A → site B (symmetric NAT: no punch) through the same
//	          relay's UDP channel (relay.Client.BindUDP / UDPIncoming):
//	          the relay forwards sealed datagrams, the mesh runs over QUIC
//	          end to end on the channel, as internal/paths does
//
// For each path and round (engines interleaved within a round): the
// throughput of one bulk flow (one mesh stream into a sink workload for
// -bulk) and p50/p99 of -n sequential -size byte request/response round
// trips on one stream to an echo workload. Also the relay process's CPU
// (utime+stime from /proc/PID/stat) per Gbit/s during the relayed bulk
// runs (TCP and UDP), and its VmRSS before and while it holds -hold idle relayed
// sessions. The relay runs as a child process (`ip netns exec RELAY1
// fogmesh relay ...`) so its CPU and memory are its own; it runs without a
// per-node byte rate limit (-bytes-per-second -1) so the figure is the
// relay's capacity, not the default 64 MiB/s policy.
//
// Workloads (echo, sink) listen on 127.0.0.1 inside the serving node's
// namespace; every socket is inside the lab. Run as root:
//
//	go build -o bin/fogmesh ./cmd/fogmesh && go run ./bench/netpaths -fogmesh bin/fogmesh
//
// (make bench-paths). It prints a markdown report and writes it to
// bench/out/netpaths-DATE.md. Ctrl-C or a failure removes the lab.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/fogmesh/fogmesh/internal/netlab"
)

type options struct {
	rounds  int
	bulk    time.Duration
	n       int
	size    int
	hold    int
	fogmesh string
	outDir  string
	limit   time.Duration
	only    string // comma-separated path names to measure ("": all)
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func main() {
	var o options
	flag.IntVar(&o.rounds, "rounds", envInt("ROUNDS", 3), "rounds; engines are interleaved within each (env ROUNDS)")
	flag.DurationVar(&o.bulk, "bulk", 4*time.Second, "length of one bulk flow")
	flag.IntVar(&o.n, "n", 2000, "request/response round trips per latency run")
	flag.IntVar(&o.size, "size", 64, "bytes per request and per response")
	flag.IntVar(&o.hold, "hold", 1000, "idle relayed sessions held for the relay's RSS (0: skip)")
	flag.StringVar(&o.fogmesh, "fogmesh", "bin/fogmesh", "the fogmesh binary whose `relay` subcommand is measured")
	flag.StringVar(&o.outDir, "out", "bench/out", "directory of the report file")
	flag.StringVar(&o.only, "only", os.Getenv("ONLY_PATHS"), "measure only these paths, comma-separated (direct,punched,relayed,relayed-udp); the hold phases need relayed (env ONLY_PATHS)")
	flag.DurationVar(&o.limit, "timeout", 15*time.Minute, "the whole run is abandoned (and cleaned up) after this")
	flag.Parse()
	if o.rounds < 1 || o.rounds > 20 || o.n < 10 || o.n > 1_000_000 || o.size < 1 || o.size > 1<<20 ||
		o.bulk < 100*time.Millisecond || o.bulk > 5*time.Minute || o.hold < 0 || o.hold > 10_000 {
		fmt.Fprintln(os.Stderr, "netpaths: a flag is out of range (rounds 1-20, n 10-1e6, size 1-1MiB, bulk 100ms-5m, hold 0-10000)")
		os.Exit(2)
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "netpaths: needs root (network namespaces, iptables); skipped")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, o.limit)
	defer cancel()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "netpaths:", err)
		cancel()
		stop()
		os.Exit(1)
	}
}

// labPrefix names the bench's namespaces apart from the tests' (fmnl).
const labPrefix = "fmnb"

func run(ctx context.Context, o options) (err error) {
	bin, err := filepath.Abs(o.fogmesh)
	if err != nil {
		return err
	}
	if fi, err := os.Stat(bin); err != nil || fi.IsDir() {
		return fmt.Errorf("no fogmesh binary at %s (make build): %v", bin, err)
	}
	if removed, err := netlab.Sweep(labPrefix); err != nil || len(removed) > 0 {
		logf("removed namespaces of a killed run: %v (%v)", removed, err)
	}
	loadStart := loadavg()
	logf("building the lab (load average %s)", loadStart)
	lab, err := netlab.Build(netlab.Options{Prefix: labPrefix})
	if lab != nil {
		defer func() {
			if cerr := lab.Close(); cerr != nil {
				err = errors.Join(err, fmt.Errorf("lab cleanup: %w", cerr))
			}
			logf("lab removed")
		}()
	}
	if err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	tmp, err := os.MkdirTemp("", "netpaths-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	b, err := setup(ctx, lab, bin, tmp)
	if b != nil {
		defer b.close()
	}
	if err != nil {
		return err
	}
	if o.only != "" {
		keep := strings.Split(o.only, ",")
		b.paths = slices.DeleteFunc(b.paths, func(p *path) bool { return !slices.Contains(keep, p.name) })
		if len(b.paths) == 0 {
			return fmt.Errorf("-only %q names no path", o.only)
		}
	}
	res, err := measure(ctx, b, o)
	if err != nil {
		return err
	}
	res.loadStart, res.loadEnd = loadStart, loadavg()
	report := res.markdown(o)
	fmt.Print(report)
	if err := os.MkdirAll(o.outDir, 0o755); err != nil {
		return err
	}
	path := filepath.Join(o.outDir, "netpaths-"+time.Now().UTC().Format("20060102-150405")+".md")
	if err := os.WriteFile(path, []byte(report), 0o644); err != nil {
		return err
	}
	logf("report written to %s", path)
	return nil
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "netpaths %s: %s\n", time.Now().UTC().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	var a, b5, c float64
	if _, err := fmt.Sscan(string(b), &a, &b5, &c); err != nil {
		return "?"
	}
	return fmt.Sprintf("%.2f, %.2f, %.2f", a, b5, c)
}
