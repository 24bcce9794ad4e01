package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/fogmesh/fogmesh/internal/cli"
	"github.com/fogmesh/fogmesh/internal/dev"
)

func runDev(args []string) error {
	fs := flag.NewFlagSet("fogmesh dev", flag.ContinueOnError)
	var opts dev.Options
	fs.StringVar(&opts.StateDir, "state-dir", "", "state directory (default $TMPDIR/fogmesh-dev)")
	fs.IntVar(&opts.BasePort, "base-port", 0, "put all the demo's ports from this one (default: control plane on 7070/7071, this node's agent API on 7073, the rest from 15300)")
	fs.IntVar(&opts.VIPOctet, "vip-octet", 101, "node i gets virtual IPs in 127.<vip-octet+i>.0.0/16")
	fs.StringVar(&opts.VIPRange, "vip-range", "", "instead of -vip-octet: one IPv4 range split in four, node i gets the i-th quarter (e.g. 127.28.0.0/16)")
	fs.IntVar(&opts.HelloPort, "hello-port", 8080, "the hello service's port")
	fs.BoolVar(&opts.Fresh, "fresh", false, "empty the state directory first (not one another fogmesh dev uses)")
	fs.StringVar(&opts.TraceEndpoint, "trace-endpoint", "", "export every demo agent's spans to this OTLP/HTTP collector (e.g. http://127.0.0.1:4318); default: no traces")
	traceSample := fs.Float64("trace-sample-ratio", 1, "with -trace-endpoint: the share of new traces recorded, 0 to 1")
	addrFile := fs.String("addr-file", "", "write the bound addresses (control admin and sync, demo API, each node's agent API and DNS) as JSON to this file once ready")
	var logf cli.LogFlags
	logf.Register(fs)
	fs.Lookup("log-level").DefValue = "warn"
	logf.Level = "warn"
	if err := fs.Parse(args); err != nil {
		return &cli.UsageError{Err: err}
	}
	log, err := logf.Logger(os.Stderr)
	if err != nil {
		return err
	}
	opts.Logger = log
	opts.TraceSampleRatio = traceSample
	ctx, stop := cli.SignalContext()
	defer stop()
	d, err := dev.Start(ctx, opts)
	if err != nil {
		return err
	}
	defer d.Close()
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	err = d.WaitReady(wctx)
	cancel()
	if err != nil {
		return err
	}
	addrs := map[string]string{"admin": d.Control.AdminAddr(), "sync": d.Control.SyncAddr(), "demo": d.DemoAddr(), "vip": d.VIP(), "relay": d.RelayAddr}
	for i, a := range d.Agents {
		addrs[dev.Nodes[i].Name+".admin"] = a.AdminAddr()
		addrs[dev.Nodes[i].Name+".dns"] = a.DNSAddr()
	}
	if err := cli.WriteAddrFile(*addrFile, addrs); err != nil {
		return err
	}
	me := d.Agents[0]
	dnsHost, dnsPort := splitHostPort(me.DNSAddr())
	fmt.Printf(`fogmesh dev is running: a control plane and 4 nodes on this machine.

  control plane   https://%s   (the CLI's default; else export FOGMESH_SERVER=https://%s)
                  mutual TLS between agents and to the control plane; the admin API needs:
  export FOGMESH_CA=%s FOGMESH_TOKEN=%s
  web UI          https://%s/ui   (sign in with the token; the browser must trust FOGMESH_CA)
  nodes           shop-1-a, shop-1-b (site shop-1), shop-2-a (site shop-2), region east;
                  cloud-a (site cloud-1, region cloud). Each runs an agent and a "hello" instance.

This machine is node shop-1-a.  Its agent: DNS %s, API http://%s

Try:
  dig @%s -p %s hello.demo.mesh +short
  curl http://$(dig @%s -p %s hello.demo.mesh +short):%d/       # or: curl http://%s/
  fogmesh get nodes            fogmesh get services            fogmesh get endpoints
  fogmesh routes               (this node's routing view; its API is http://%s)
  fogmesh describe service hello   (hello's endpoints as this node routes them: tier, health, latency)

Locality: the answer comes from shop-1-a (same node). Stop that instance and the next
request goes to shop-1-b (same site), then shop-2-a (same region), then cloud-a:
  fogmesh demo stop shop-1-a      (and: fogmesh demo start shop-1-a)
Paths: shop-2-a plays a node behind a NAT (it advertises no reachable mesh address): its
peers reach it through the demo relay (%s), then over a UDP path punched to it. After a
request has gone there (stop shop-1-a and shop-1-b), see this node's paths and everyone's:
  fogmesh paths                fogmesh get paths
(Real NAT routers need root: 'sudo go test -run TestCrossSitePaths ./cmd/fogmesh' builds
network namespaces with NATs and shows direct, punched and relayed paths between sites.)
(With 'go run', write 'go run ./cmd/fogmesh' for 'fogmesh', or 'make build' and use bin/fogmesh.)

State is in %s; Ctrl-C stops everything.
`, d.Control.AdminAddr(), d.Control.AdminAddr(), d.Control.BundlePath(), d.AdminToken, d.Control.AdminAddr(), me.DNSAddr(), me.AdminAddr(),
		dnsHost, dnsPort, dnsHost, dnsPort, opts.HelloPort, d.VIP(), me.AdminAddr(), d.RelayAddr, stateDirOf(opts))
	<-ctx.Done()
	fmt.Println("\nfogmesh dev: stopping")
	return nil
}

func stateDirOf(o dev.Options) string {
	if o.StateDir != "" {
		return o.StateDir
	}
	return dev.DefaultStateDir()
}
