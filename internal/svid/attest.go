package svid

import (
	"fmt"

	"github.com/fogmesh/fogmesh/internal/workloadapi"
)

// Attest selects which local processes receive a workload's SVID from the
// Workload API socket, and which may use its identity as local clients
// (the agent's localid.go). Every field that is set must match the
// caller; a workload without Attest is never handed to a caller.
//
// A uid or gid the kernel could not map into the agent's user namespace
// (a caller in another one, seen as the overflow id 65534) is unknown: it
// matches no UID or GID selector, and Validate refuses a selector naming
// the overflow id, which would match every such caller whoever it is.
type Attest struct {
	UID *int `json:"uid,omitempty"`
	GID *int `json:"gid,omitempty"`
	// Path is the caller's executable (/proc/<pid>/exe). It never matches
	// a caller the agent cannot see in its /proc (workloadapi.Caller.Exe).
	Path string `json:"path,omitempty"`
}

// Matches reports whether every selector that is set matches c, and at
// least one is set. A UID (GID) selector never matches a caller whose uid
// (gid) is unknown (workloadapi.Caller.HasUID).
func (at *Attest) Matches(c workloadapi.Caller) bool {
	if at == nil || !c.Known || (at.UID == nil && at.GID == nil && at.Path == "") {
		return false
	}
	if at.UID != nil && (!c.HasUID() || int32(*at.UID) != c.UID) {
		return false
	}
	if at.GID != nil && (!c.HasGID() || int32(*at.GID) != c.GID) {
		return false
	}
	if at.Path != "" && c.Exe != at.Path {
		return false
	}
	return true
}

// Validate checks that the uid and gid selectors name ids a process can
// have, 0 to 4294967294 ((uid_t)-1 is no id), and not the overflow ids
// (workloadapi.Overflow): a caller shows those when the agent's user
// namespace does not map its ids, so a selector naming them would match
// every such caller. A host daemon running as nobody (65534) cannot be
// told apart from them; give it a uid of its own. A nil Attest is valid.
func (at *Attest) Validate() error {
	if at == nil {
		return nil
	}
	ov := workloadapi.Overflow()
	check := func(field, kind string, id *int, overflow uint32) error {
		switch {
		case id == nil:
			return nil
		case *id < 0 || int64(*id) >= 1<<32-1:
			return fmt.Errorf("%s: %d is not a %s (0 to 4294967294)", field, *id, kind)
		case uint32(*id) == overflow:
			return fmt.Errorf("%s: %d is the overflow %s (/proc/sys/kernel/overflow%s), which the kernel reports for any "+
				"process whose %s the agent's user namespace does not map, so it names no one; run the workload under its own %s",
				field, *id, kind, kind, kind, kind)
		}
		return nil
	}
	if err := check("uid", "uid", at.UID, ov.UID); err != nil {
		return err
	}
	return check("gid", "gid", at.GID, ov.GID)
}
