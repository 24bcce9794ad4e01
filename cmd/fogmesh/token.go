package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"strings"

	"github.com/fogmesh/fogmesh/internal/cli"
	"github.com/fogmesh/fogmesh/internal/control"
)

// runToken runs `fogmesh token create`: a join token for a site and
// optionally a region (one-time, expiring), with -kind relay a relay token (one-time, expiring: a relay
// joins with it), with -kind region a region token (one-time, expiring: a
// regional control plane joins with it) or, with -kind admin, an admin API
// token with a role.
func runToken(args []string) error {
	fs := flag.NewFlagSet("fogmesh token", flag.ContinueOnError)
	server := serverFlag(fs)
	var req control.TokenRequest
	fs.StringVar(&req.Kind, "kind", "join", "join (a node joins with it), relay (a relay joins with it: fogmesh relay -join-token), region (a regional control plane joins with it: fogmesh control --mode regional --join-token) or admin (admin API bearer token)")
	fs.StringVar(&req.Site, "site", "", "join tokens: the site the joining node must be in (required)")
	fs.StringVar(&req.Region, "region", "", "region tokens: the region of the regional control plane (required); join tokens: the node's region (optional; without it the node's join declares it), to which the node is bound")
	fs.StringVar(&req.Role, "role", "", "admin tokens: admin (default) or read-only")
	fs.StringVar(&req.TTL, "ttl", "", "lifetime, e.g. 1h (join, relay and region default 1h; admin default: no expiry)")
	out := fs.String("o", "text", "output: text (the token alone) or json")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 || fs.Arg(0) != "create" {
		return cli.Usagef("token: want create [-site S] [-region R] [-ttl D] [-kind join|relay|region|admin] [-role admin|read-only]")
	}
	if req.Kind == "join" && req.Site == "" {
		return cli.Usagef("token create: -site is required for a join token")
	}
	if req.Kind == "region" && req.Region == "" {
		return cli.Usagef("token create: -region is required for a region token")
	}
	b, _ := json.Marshal(req)
	var resp control.TokenResponse
	if err := call("POST", strings.TrimRight(*server, "/")+"/v1/tokens", b, &resp); err != nil {
		return err
	}
	if *out == "json" {
		b, _ := json.MarshalIndent(resp, "", "  ")
		fmt.Println(string(jsonTermSafe(b)))
		return nil
	}
	fmt.Println(resp.Token)
	return nil
}
