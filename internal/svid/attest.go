package svid

import "github.com/fogmesh/fogmesh/internal/workloadapi"

// Attest selects which local processes receive a workload's SVID from the
// Workload API socket, and which may use its identity as local clients
// (the agent's localid.go). Every field that is set must match the
// caller; a workload without Attest is never handed to a caller.
type Attest struct {
	UID *int `json:"uid,omitempty"`
	GID *int `json:"gid,omitempty"`
	// Path is the caller's executable (/proc/<pid>/exe). It never matches
	// a caller the agent cannot see in its /proc (workloadapi.Caller.Exe).
	Path string `json:"path,omitempty"`
}

// Matches reports whether every selector that is set matches c, and at
// least one is set.
func (at *Attest) Matches(c workloadapi.Caller) bool {
	if at == nil || !c.Known || (at.UID == nil && at.GID == nil && at.Path == "") {
		return false
	}
	if at.UID != nil && int32(*at.UID) != c.UID {
		return false
	}
	if at.GID != nil && int32(*at.GID) != c.GID {
		return false
	}
	if at.Path != "" && c.Exe != at.Path {
		return false
	}
	return true
}
