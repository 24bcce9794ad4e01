package workloadapi

import (
	"os"
	"strconv"
	"strings"
)

// callerExe reads the executable of the caller whose SO_PEERCRED pid is
// pid, through the proc filesystem at procRoot ("/proc"; tests pass a fake
// one), from an agent whose own pid is selfPID. pidfd is the caller's
// pidfd from SO_PEERPIDFD, or -1.
//
// SO_PEERCRED gives the pid as the agent's pid namespace numbers it, and 0
// for a caller outside it (a workload in a sibling container, with the
// socket mounted in). /proc numbers processes as the pid namespace it was
// mounted for, which need not be the agent's (an agent in its own pid
// namespace that still sees the host's /proc): there /proc/<pid> is some
// other process, whose executable a path selector must not be checked
// against. So the result is "" (unknown: path selectors fail) unless
//   - pid > 0,
//   - procRoot/self names selfPID (this /proc numbers as the agent does),
//   - and, with a pidfd, procRoot/self/fdinfo/<pidfd> numbers the caller
//     pid too (the pidfd is the connecting process itself, not a pid).
func callerExe(procRoot string, selfPID int, pid int32, pidfd int) string {
	if pid <= 0 {
		return ""
	}
	self, err := os.Readlink(procRoot + "/self")
	if err != nil || self != strconv.Itoa(selfPID) {
		return ""
	}
	if pidfd >= 0 {
		if n, ok := fdinfoPid(procRoot + "/self/fdinfo/" + strconv.Itoa(pidfd)); ok && n != int64(pid) {
			return ""
		}
	}
	exe, _ := os.Readlink(procRoot + "/" + strconv.Itoa(int(pid)) + "/exe")
	return exe
}

// fdinfoPid is the "Pid:" line of a pidfd's fdinfo: the process's pid in
// the pid namespace of that /proc (0 if not visible there, -1 if it
// exited); ok is false when there is no such line (kernels before 5.x).
func fdinfoPid(path string) (int64, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "Pid:"); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}
