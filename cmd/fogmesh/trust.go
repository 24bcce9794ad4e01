package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/fogmesh/fogmesh/internal/cli"
	"github.com/fogmesh/fogmesh/internal/control"
	"github.com/fogmesh/fogmesh/internal/identity"
)

// runTrust runs `fogmesh trust add -domain D -bundle FILE` (federate a
// trust domain) and `fogmesh trust remove D`.
func runTrust(args []string) error {
	fs := flag.NewFlagSet("fogmesh trust", flag.ContinueOnError)
	server := serverFlag(fs)
	domain := fs.String("domain", "", "trust domain to federate, e.g. other.example")
	bundle := fs.String("bundle", "", "its trust bundle: PEM CA certificates")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	base := strings.TrimRight(*server, "/")
	switch {
	case fs.NArg() == 1 && fs.Arg(0) == "add":
		if *domain == "" || *bundle == "" {
			return cli.Usagef("trust add: -domain and -bundle are required")
		}
		b, err := os.ReadFile(*bundle)
		if err != nil {
			return cli.Usagef("trust add: %v", err)
		}
		if _, err := identity.ParseBundlePEM(b); err != nil {
			return cli.Usagef("trust add: %s: %v", *bundle, err)
		}
		body, _ := json.Marshal(control.TrustRequest{TrustDomain: *domain, Bundle: string(b)})
		if err := call("POST", base+"/v1/trust", body, nil); err != nil {
			return err
		}
		fmt.Printf("trust domain %s added\n", *domain)
	case fs.NArg() == 2 && fs.Arg(0) == "remove":
		// Checked here so that a name like "../x" never becomes another path.
		if _, err := identity.ParseTrustDomain(fs.Arg(1)); err != nil || fs.Arg(1) == "" {
			return cli.Usagef("trust remove: %v", err)
		}
		if err := call("DELETE", base+"/v1/trust/"+url.PathEscape(fs.Arg(1)), nil, nil); err != nil {
			return err
		}
		fmt.Printf("trust domain %s removed\n", fs.Arg(1))
	default:
		return cli.Usagef("trust: want add -domain D -bundle FILE, or remove D")
	}
	return nil
}
