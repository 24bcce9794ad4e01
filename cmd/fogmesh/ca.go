package main

import (
	"flag"
	"fmt"
	"strings"

	"github.com/fogmesh/fogmesh/internal/cli"
)

// runCA runs `fogmesh ca rotate`: a new root issues from now on; the old
// one stays trusted for the control plane's rotation overlap.
func runCA(args []string) error {
	fs := flag.NewFlagSet("fogmesh ca", flag.ContinueOnError)
	server := serverFlag(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 || fs.Arg(0) != "rotate" {
		return cli.Usagef("ca: want rotate")
	}
	var resp struct {
		Pin   string `json:"pin"`
		Roots int    `json:"roots"`
	}
	if err := call("POST", strings.TrimRight(*server, "/")+"/v1/ca/rotate", []byte("{}"), &resp); err != nil {
		return err
	}
	fmt.Printf("CA rotated: new root pin %s; %d roots trusted during the overlap\n", resp.Pin, resp.Roots)
	return nil
}
