package main

import (
	"flag"
	"fmt"
	"net/url"
	"strings"

	"github.com/fogmesh/fogmesh/internal/cli"
)

// runRegion runs `fogmesh region revoke NAME` against the global control
// plane: the region's identity goes on the deny list, so every certificate
// its intermediate CA issued is refused by the verifiers that learn it.
func runRegion(args []string) error {
	fs := flag.NewFlagSet("fogmesh region", flag.ContinueOnError)
	server := serverFlag(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 2 || fs.Arg(0) != "revoke" {
		return cli.Usagef("region: want revoke NAME")
	}
	var resp map[string]string
	if err := call("POST", strings.TrimRight(*server, "/")+"/v1/regions/"+url.PathEscape(fs.Arg(1))+"/revoke", []byte("{}"), &resp); err != nil {
		return err
	}
	fmt.Printf("region %s revoked (%s)\n", fs.Arg(1), resp["revoked"])
	return nil
}
