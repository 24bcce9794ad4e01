package main

import "github.com/fogmesh/fogmesh/internal/relay/relaycmd"

// runRelay runs `fogmesh relay`: the same program as the lean
// fogmesh-relay binary.
func runRelay(args []string) error { return relaycmd.Run("fogmesh relay", args) }
