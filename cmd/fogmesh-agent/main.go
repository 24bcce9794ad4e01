// Command fogmesh-agent is the node agent alone: the same program as
// `fogmesh agent`, without the control plane, CLI verbs and demo, so that it
// stays small enough for ARM boards.
package main

import (
	"os"

	"github.com/fogmesh/fogmesh/internal/cli"
)

func main() {
	args := os.Args[1:]
	if len(args) > 0 && args[0] == "agent" {
		args = args[1:]
	}
	os.Exit(cli.ExitCode("fogmesh-agent", cli.RunAgent("fogmesh-agent", args)))
}
