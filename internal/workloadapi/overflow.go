package workloadapi

import (
	"os"
	"strconv"
	"strings"
	"sync"
)

// OverflowIDs are the ids the kernel reports for a uid or gid that has no
// mapping in the reader's user namespace (/proc/sys/kernel/overflowuid and
// overflowgid, 65534 unless changed): SO_PEERCRED, sock_diag and
// /proc/<pid>/status all give them for a process of another user namespace
// whose ids the agent's does not map. Such an id names no one (every
// unmapped caller has it, and so does the host's nobody): a uid or gid
// selector never matches it (Caller.HasUID, Caller.HasGID), and a
// selector naming it is refused (svid.Attest.Validate).
type OverflowIDs struct{ UID, GID uint32 }

// Overflow returns the overflow ids, read from /proc/sys/kernel at the
// first call (a later change of the sysctls is not seen). An id that
// cannot be read is 65534, the kernel's default.
func Overflow() OverflowIDs { return overflow() }

var overflow = sync.OnceValue(func() OverflowIDs { return readOverflow("/proc") })

// readOverflow reads the overflow ids through the proc filesystem at
// procRoot.
func readOverflow(procRoot string) OverflowIDs {
	read := func(name string) uint32 {
		b, err := os.ReadFile(procRoot + "/sys/kernel/" + name)
		if err != nil {
			return 65534
		}
		n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32)
		if err != nil {
			return 65534
		}
		return uint32(n)
	}
	return OverflowIDs{UID: read("overflowuid"), GID: read("overflowgid")}
}

// HasUID reports whether c's UID is a uid: its credentials were read and
// the kernel could map its uid into the agent's user namespace (it is not
// the overflow uid).
func (c Caller) HasUID() bool { return c.Known && uint32(c.UID) != Overflow().UID }

// HasGID is HasUID for the gid.
func (c Caller) HasGID() bool { return c.Known && uint32(c.GID) != Overflow().GID }
