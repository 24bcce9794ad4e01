// Package localid decides whether a local client connection may carry the
// identity of the workload registered at its source address. Any local
// process can bind that address, so where the workload declares attest
// selectors (the ones that guard its SVID on the Workload API socket) the
// address only names the candidate: Check asks the kernel which processes
// hold the client socket (package sockowner) and grants the identity only
// if they all match one selector. Logging and counting are the caller's.
package localid

import (
	"net/netip"
	"time"

	"github.com/fogmesh/fogmesh/internal/sockowner"
	"github.com/fogmesh/fogmesh/internal/svid"
	"github.com/fogmesh/fogmesh/internal/workloadapi"
)

// Verdict is the outcome of Check.
type Verdict int

const (
	// Attested: the socket's holders match a selector.
	Attested Verdict = iota
	// Mismatch: the owner was found and matches no selector.
	Mismatch
	// UnknownOwner: the owner could not be found (non-Linux, the socket
	// gone, no permission).
	UnknownOwner
)

// Result is a Verdict with what was found.
type Result struct {
	Verdict Verdict
	// Owner is the socket's owner; Procs is empty when the socket's
	// creator alone refuted every selector (no /proc scan was needed) or
	// the owner is unknown.
	Owner sockowner.Owner
	Err   error // why the owner is unknown
	Took  time.Duration
	// Unmapped: the owner was found, and the kernel could not map its
	// uid or a holder's uid or gid into the agent's user namespace (the
	// client is in another one); those ids matched no uid or gid
	// selector.
	Unmapped bool
}

// Check attests the client socket client→server (as seen from the
// server) against ats, which must not be empty.
func Check(ats []*svid.Attest, client, server netip.AddrPort) Result {
	start := time.Now()
	o, err := sockowner.Find(client, server)
	if err == nil && !uidPossible(ats, o.UID) {
		// Refused on the socket's creator alone: no /proc scan, so a
		// flood of impostor connections costs one netlink query each.
		return Result{Verdict: Mismatch, Owner: o, Unmapped: unmapped(o), Took: time.Since(start)}
	}
	if err == nil {
		o.Procs, err = sockowner.Holders(o.Inode)
	}
	r := Result{Owner: o, Err: err, Took: time.Since(start), Unmapped: err == nil && unmapped(o)}
	switch {
	case err != nil || len(o.Procs) == 0:
		r.Verdict = UnknownOwner
	case !ownerMatches(ats, o):
		r.Verdict = Mismatch
	default:
		r.Verdict = Attested
	}
	return r
}

// ownerMatches reports whether the processes holding a client socket are
// all described by one of the selectors: a process that execs an allowed
// binary while keeping a copy of the socket does not pass. A uid selector
// must also match the socket's creator. The holders' ids and the
// creator's uid are as the agent's user namespace sees them: the overflow
// ids (unmapped) match no uid or gid selector, as on the Workload API.
func ownerMatches(ats []*svid.Attest, o sockowner.Owner) bool {
	if len(o.Procs) == 0 {
		return false
	}
	for _, at := range ats {
		if at.UID != nil && !uidMatches(*at.UID, o.UID) {
			continue
		}
		all := true
		for _, p := range o.Procs {
			if !at.Matches(workloadapi.Caller{PID: p.PID, UID: p.UID, GID: p.GID, Exe: p.Exe, Known: true}) {
				all = false
				break
			}
		}
		if all {
			return true
		}
	}
	return false
}

// uidPossible reports whether a socket created by uid can pass one of
// the selectors (ownerMatches then checks its processes).
func uidPossible(ats []*svid.Attest, uid uint32) bool {
	for _, at := range ats {
		if at.UID == nil || uidMatches(*at.UID, uid) {
			return true
		}
	}
	return false
}

// uidMatches reports whether a uid selector names the socket creator's
// uid, which the overflow uid (unmapped: unknown) never is.
func uidMatches(sel int, uid uint32) bool {
	return uid != workloadapi.Overflow().UID && uint32(sel) == uid
}

// unmapped reports whether the kernel could not map the socket creator's
// uid or a holder's uid or gid into the agent's user namespace (they show
// as the overflow ids).
func unmapped(o sockowner.Owner) bool {
	ov := workloadapi.Overflow()
	if o.UID == ov.UID {
		return true
	}
	for _, p := range o.Procs {
		if uint32(p.UID) == ov.UID || uint32(p.GID) == ov.GID {
			return true
		}
	}
	return false
}
