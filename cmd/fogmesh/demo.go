package main

import (
	"flag"
	"fmt"
	"net"
	"strings"

	"github.com/fogmesh/fogmesh/internal/cli"
)

func splitHostPort(s string) (string, string) {
	h, p, _ := net.SplitHostPort(s)
	return h, p
}

func runDemo(args []string) error {
	fs := flag.NewFlagSet("fogmesh demo", flag.ContinueOnError)
	addr := fs.String("demo", envOr("FOGMESH_DEMO", "http://127.0.0.1:15302"), "demo API of a running 'fogmesh dev' ($FOGMESH_DEMO)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 2 || (fs.Arg(0) != "stop" && fs.Arg(0) != "start") {
		return cli.Usagef("demo: want stop NODE or start NODE")
	}
	if err := call("POST", strings.TrimRight(*addr, "/")+"/demo/"+fs.Arg(0)+"/"+fs.Arg(1), nil, nil); err != nil {
		return err
	}
	fmt.Printf("hello on %s: %s\n", fs.Arg(1), map[string]string{"stop": "stopped", "start": "started"}[fs.Arg(0)])
	return nil
}
