package main

import (
	"flag"
	"fmt"
	"strings"

	"github.com/fogmesh/fogmesh/internal/cli"
)

// runNode runs `fogmesh node revoke NAME`: the node's identity goes on the
// deny list every agent enforces.
func runNode(args []string) error {
	fs := flag.NewFlagSet("fogmesh node", flag.ContinueOnError)
	server := serverFlag(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 2 || fs.Arg(0) != "revoke" {
		return cli.Usagef("node: want revoke NAME")
	}
	var resp map[string]string
	if err := call("POST", strings.TrimRight(*server, "/")+"/v1/nodes/"+fs.Arg(1)+"/revoke", []byte("{}"), &resp); err != nil {
		return err
	}
	fmt.Printf("node %s revoked (%s)\n", fs.Arg(1), resp["revoked"])
	return nil
}
