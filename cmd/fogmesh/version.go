package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/fogmesh/fogmesh/internal/cli"
)

func runVersion(args []string) error {
	if len(args) == 1 && isHelp(args[0]) {
		fmt.Println("usage: fogmesh version   (the version, the commit it was built from, Go, OS/arch)")
		return nil
	}
	if len(args) > 0 {
		return cli.Usagef("version takes no arguments")
	}
	fmt.Printf("fogmesh %s (commit %s, %s, %s/%s)\n", cli.Version, commit(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return nil
}

// commit is the commit the Makefile stamped (cli.Commit), else the one Go
// stamped itself (vcs.revision, "+dirty" when vcs.modified), else unknown
// (go run, -buildvcs=false).
func commit() string {
	if cli.Commit != "" {
		return cli.Commit
	}
	rev, dirty := "unknown", ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			switch {
			case s.Key == "vcs.revision":
				rev = s.Value
			case s.Key == "vcs.modified" && s.Value == "true":
				dirty = "+dirty"
			}
		}
	}
	if rev == "unknown" {
		return rev
	}
	return rev + dirty
}
