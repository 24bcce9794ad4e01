package main

import (
	"flag"
	"fmt"
	"net/url"
	"strings"

	"github.com/fogmesh/fogmesh/internal/cli"
)

// runNode runs `fogmesh node revoke NAME`: the node's identity goes on the
// deny list every agent enforces.
func runNode(args []string) error { return runRevoke("node", "nodes", args) }

// runRegion runs `fogmesh region revoke NAME` against the global control
// plane: the region's identity goes on the deny list, so every certificate
// its intermediate CA issued is refused by the verifiers that learn it.
func runRegion(args []string) error { return runRevoke("region", "regions", args) }

// runRevoke runs `fogmesh KIND revoke NAME`: POST /v1/COLLECTION/NAME/revoke
// on the control plane's admin API.
func runRevoke(kind, collection string, args []string) error {
	fs := flag.NewFlagSet("fogmesh "+kind, flag.ContinueOnError)
	server := serverFlag(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 2 || fs.Arg(0) != "revoke" {
		return cli.Usagef("%s: want revoke NAME", kind)
	}
	var resp map[string]string
	if err := call("POST", strings.TrimRight(*server, "/")+"/v1/"+collection+"/"+url.PathEscape(fs.Arg(1))+"/revoke", []byte("{}"), &resp); err != nil {
		return err
	}
	fmt.Printf("%s %s revoked (%s)\n", kind, fs.Arg(1), resp["revoked"])
	return nil
}
