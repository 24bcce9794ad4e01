package main

import "github.com/fogmesh/fogmesh/internal/relay/relaycmd"

// runRelay runs `fogmesh relay`: the same program as the lean
// fogmesh-relay binary; `fogmesh relay revoke NAME` deny-lists a relay
// through the admin API instead.
func runRelay(args []string) error {
	if len(args) > 0 && args[0] == "revoke" {
		return runRevoke("relay", "relays", args)
	}
	return relaycmd.Run("fogmesh relay", args)
}
