// Command fogmesh-relay is the relay alone: the same program as `fogmesh
// relay` (internal/relay/relaycmd), without the control plane, the agent,
// the CLI verbs and the demo, for a small host with a public address.
package main

import (
	"os"

	"github.com/fogmesh/fogmesh/internal/cli/base"
	"github.com/fogmesh/fogmesh/internal/relay/relaycmd"
)

func main() {
	args := os.Args[1:]
	if len(args) > 0 && args[0] == "relay" {
		args = args[1:]
	}
	os.Exit(base.ExitCode("fogmesh-relay", relaycmd.Run("fogmesh-relay", args)))
}
