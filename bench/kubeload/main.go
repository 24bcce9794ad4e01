// Command kubeload measures fogmesh's Kubernetes registry (issue 15,
// "Benchmarks") against a real kube-apiserver (internal/testenv/kubeapi):
// it creates Services, EndpointSlices and Pods with client-go, runs
// `fogmesh control -kube` (secure, the default) and real agents joined
// with tokens, changes EndpointSlices at a steady rate and measures for
// each change the time until every agent routes by it: a real HTTP
// request through each agent's virtual IP for the service is answered by
// the endpoints' new port. It reports p50/p99 of that, the control
// plane's RSS with the objects, and, in the same run, the cost of
// transparent capture: requests to a Service's captured ClusterIP against
// requests to the agent's virtual IP for it.
//
// It needs root: it runs itself again in a network namespace of its own
// (unshare --net) whose loopback has the pods' 10.244.0.0/16 and the
// Services' 10.96.0.0/16 as local addresses, and the capturing agent
// manages nftables there. Nothing leaves the namespace.
//
//	sudo go run ./bench/kubeload -fogmesh bin/fogmesh -services 1000 -endpoints 10000
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// netnsEnv marks the run inside the bench's own network namespace.
const netnsEnv = "KUBELOAD_NETNS"

// netnsScript readies the new namespace's loopback (the pods' and the
// Services' ranges are local addresses) and runs "$0" "$@".
const netnsScript = `ip link set lo up && ip route add local 10.244.0.0/16 dev lo && ip route add local 10.96.0.0/16 dev lo && exec "$0" "$@"`

func main() {
	var cfg config
	jsonOut := flag.String("json", "", "append the result as one JSON line to this file")
	timeout := flag.Duration("timeout", 15*time.Minute, "bound of the whole run")
	keep := flag.Bool("keep", false, "keep the work dir (state, logs)")
	flag.StringVar(&cfg.Bin, "fogmesh", "bin/fogmesh", "the fogmesh binary (control plane and agents)")
	flag.IntVar(&cfg.Services, "services", 1000, "Services")
	flag.IntVar(&cfg.Endpoints, "endpoints", 10000, "endpoints, spread evenly over the Services (one EndpointSlice each)")
	flag.IntVar(&cfg.Agents, "agents", 3, "real agents (node kn-0 runs every pod and captures; the others reach them through it)")
	flag.BoolVar(&cfg.Pods, "pods", true, "create a Pod per endpoint (the control plane watches them: service accounts, labels)")
	flag.IntVar(&cfg.Changes, "changes", 300, "EndpointSlice changes to measure (each to another Service; at most -services)")
	flag.Float64Var(&cfg.Rate, "rate", 10, "EndpointSlice changes per second")
	flag.DurationVar(&cfg.ProbeEvery, "probe-every", 5*time.Millisecond, "interval of the requests that look for a change's effect at each agent")
	flag.DurationVar(&cfg.ChangeTimeout, "change-timeout", 30*time.Second, "a change not seen by an agent after this long is counted as missed")
	flag.IntVar(&cfg.CaptureRounds, "capture-rounds", 6, "rounds of the capture-against-virtual-IP comparison (0: none)")
	flag.IntVar(&cfg.CaptureReqs, "capture-requests", 500, "requests per path and round in that comparison")
	flag.Parse()
	if cfg.Services <= 0 || cfg.Endpoints < cfg.Services || cfg.Agents < 1 || cfg.Changes < 0 || cfg.Changes > cfg.Services || cfg.Rate <= 0 {
		fmt.Fprintln(os.Stderr, "kubeload: need services > 0, endpoints >= services, agents >= 1, 0 <= changes <= services, rate > 0")
		os.Exit(2)
	}
	if cfg.Endpoints > 250*250 {
		fmt.Fprintln(os.Stderr, "kubeload: at most 62,500 endpoints (addresses in 10.244.0.0/16)")
		os.Exit(2)
	}
	bin, err := filepath.Abs(cfg.Bin)
	if err == nil {
		_, err = os.Stat(bin)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "kubeload: -fogmesh: %v (make build, or make bench-kube)\n", err)
		os.Exit(2)
	}
	cfg.Bin = bin
	if os.Getenv(netnsEnv) != "1" {
		os.Exit(reexec())
	}
	dir, err := os.MkdirTemp("", "kubeload-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "kubeload:", err)
		os.Exit(1)
	}
	if !*keep {
		defer os.RemoveAll(dir)
	}
	cfg.Dir = dir
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	res, err := run(ctx, cfg)
	printResult(res)
	if *jsonOut != "" {
		os.MkdirAll(filepath.Dir(*jsonOut), 0o755)
		if f, ferr := os.OpenFile(*jsonOut, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644); ferr == nil {
			b, _ := json.Marshal(struct {
				result
				Err string `json:",omitempty"`
			}{res, errString(err)})
			f.Write(append(b, '\n'))
			f.Close()
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "kubeload: %v (work dir %s)\n", err, dir)
		if !*keep {
			os.RemoveAll(dir)
		}
		os.Exit(1)
	}
	if res.Missed > 0 {
		os.Exit(1)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// reexec runs this program again in a new network namespace with the
// pods' and Services' ranges local on its loopback; it returns the exit
// code.
func reexec() int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "kubeload: needs root (a network namespace of its own, and nftables for transparent capture)")
		return 2
	}
	unshare, err := exec.LookPath("unshare")
	if err == nil {
		_, err = exec.LookPath("ip")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "kubeload: needs unshare and ip (util-linux, iproute2):", err)
		return 2
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "kubeload:", err)
		return 1
	}
	cmd := exec.Command(unshare, append([]string{"--net", "--", "sh", "-c", netnsScript, self}, os.Args[1:]...)...)
	cmd.Env = append(os.Environ(), netnsEnv+"=1")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		fmt.Fprintln(os.Stderr, "kubeload:", err)
		return 1
	}
	return 0
}
