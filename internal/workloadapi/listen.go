package workloadapi

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// testHookAfterBind, if set, runs between the bind of the socket and the
// change of its mode (tests put a symlink there, as an attacker racing
// Listen in a directory it may write would).
var testHookAfterBind func(path string)

// Listen opens the Unix socket at path, replacing a stale socket file left
// by an earlier run, and makes it reachable by every local user: callers are
// told apart by their credentials, not by file permissions.
//
// The mode is set on the socket file bind made, never through a symlink:
// in a directory others may write, one could swap the fresh socket for a
// symlink to, say, /etc/shadow between bind and chmod, and a chmod by path
// would make that file world-writable. So the path is opened without
// following a symlink (O_PATH|O_NOFOLLOW), the open file must be a socket
// owned by this process's uid, and the mode is set on that open file
// (fchmodat2 with AT_EMPTY_PATH, or /proc/self/fd on kernels before 6.6).
// A replaced path fails Listen. Sockets in a directory only the agent may
// write (PrepareDir) cannot be replaced at all.
func Listen(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("workload API socket %s: exists and is not a socket", path)
		}
		os.Remove(path)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("workload API socket: %w", err)
	}
	if testHookAfterBind != nil {
		testHookAfterBind(path)
	}
	if err := chmodSocket(path, 0o666); err != nil {
		// Do not unlink what is at path now: it is not our socket.
		ln.(*net.UnixListener).SetUnlinkOnClose(false)
		ln.Close()
		return nil, fmt.Errorf("workload API socket %s: %w", path, err)
	}
	return ln, nil
}

// chmodSocket sets the mode of the socket file at path, which must be a
// socket owned by this process's effective uid; a symlink there is refused,
// not followed.
func chmodSocket(path string, mode uint32) error {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open after bind: %w", err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("stat after bind: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return errors.New("replaced by a non-socket (a symlink?) after bind: not changing its mode")
	}
	if st.Uid != uint32(os.Geteuid()) {
		return fmt.Errorf("replaced by a socket of uid %d after bind: not changing its mode", st.Uid)
	}
	err = unix.Fchmodat(fd, "", mode, unix.AT_EMPTY_PATH)
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) {
		// No fchmodat2 (Linux < 6.6): chmod the open file through its
		// /proc/self/fd link, which names that inode, not a path.
		err = unix.Chmod("/proc/self/fd/"+strconv.Itoa(fd), mode)
	}
	if err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	return nil
}

// PrepareDir makes dir, the directory of the default socket, a directory
// every local user may traverse and only this process's uid may write
// (mode 0755, missing parents made 0755): no other user can then place
// anything at the socket's path. An existing dir must be a real
// directory (not a symlink) owned by this uid; its mode is set to 0755.
func PrepareDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("workload API socket directory: %w", err)
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("workload API socket directory %s: %w", dir, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("workload API socket directory %s: %w", dir, err)
	}
	if st.Uid != uint32(os.Geteuid()) {
		return fmt.Errorf("workload API socket directory %s: owned by uid %d, not by this agent's %d", dir, st.Uid, os.Geteuid())
	}
	if err := unix.Fchmod(fd, 0o755); err != nil {
		return fmt.Errorf("workload API socket directory %s: %w", dir, err)
	}
	return nil
}
