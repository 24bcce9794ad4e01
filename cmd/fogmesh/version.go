package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/fogmesh/fogmesh/internal/cli"
)

func runVersion(args []string) error {
	if len(args) > 0 {
		return cli.Usagef("version takes no arguments")
	}
	rev := "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				rev = s.Value
			}
		}
	}
	fmt.Printf("fogmesh %s (commit %s, %s, %s/%s)\n", cli.Version, rev, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return nil
}
