package sockowner

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// seq numbers requests (a fresh netlink socket per lookup makes it a
// belt-and-braces check).
var seq atomic.Uint32

// Lookup returns the owner of the TCP socket on this host whose local end
// is client and whose remote end is server: for a connection the agent
// accepted, client is its remote address and server its local address.
// It is Find and then Holders.
func Lookup(client, server netip.AddrPort) (Owner, error) {
	uid, inode, err := socketOf(client, server)
	if err != nil {
		return Owner{}, err
	}
	procs, err := Holders(inode)
	if err != nil {
		return Owner{}, err
	}
	return Owner{UID: uid, Inode: inode, Procs: procs}, nil
}

// Find asks the kernel for that socket alone (one netlink round trip, no
// /proc scan): its creator's uid and its inode, without Procs. It fails
// with ErrNotFound when there is no such socket, and with another error
// when the kernel cannot be asked.
func Find(client, server netip.AddrPort) (Owner, error) {
	uid, inode, err := socketOf(client, server)
	return Owner{UID: uid, Inode: inode}, err
}

func socketOf(client, server netip.AddrPort) (uid, inode uint32, err error) {
	c := netip.AddrPortFrom(client.Addr().Unmap(), client.Port())
	s := netip.AddrPortFrom(server.Addr().Unmap(), server.Port())
	if c.Addr().Is4() && s.Addr().Is4() {
		uid, inode, err = diag(newSockID(afInet, c, s))
		if !errors.Is(err, ErrNotFound) {
			return uid, inode, err
		}
		// A dual-stack (AF_INET6) client socket connected to an IPv4
		// address holds it v4-mapped.
	}
	return diag(newSockID(afInet6, c, s))
}

// diag sends one exact sock_diag request and reads the kernel's reply.
func diag(id sockID) (uid, inode uint32, err error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return 0, 0, fmt.Errorf("sockowner: netlink socket: %w", err)
	}
	defer unix.Close(fd)
	// The kernel answers at once; the timeout only keeps a wedged kernel
	// from holding a connection's goroutine forever.
	tv := unix.Timeval{Sec: 2}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return 0, 0, fmt.Errorf("sockowner: netlink timeout: %w", err)
	}
	n := seq.Add(1)
	if err := unix.Sendto(fd, encodeRequest(n, id), 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, 0, fmt.Errorf("sockowner: sock_diag request: %w", err)
	}
	buf := make([]byte, 8192)
	for range 4 { // a reply is one datagram; skip the odd stray one
		m, from, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return 0, 0, fmt.Errorf("sockowner: sock_diag reply: %w", err)
		}
		if nl, ok := from.(*unix.SockaddrNetlink); !ok || nl.Pid != 0 {
			continue // not from the kernel
		}
		return parseReply(buf[:m], n, id)
	}
	return 0, 0, errors.New("sockowner: no sock_diag reply from the kernel")
}

// Holders scans /proc/*/fd for the processes holding socket inode (the
// costly part of Lookup: a readlink per descriptor on the host). A process
// the caller may not inspect (another user's, for a caller without root or
// CAP_SYS_PTRACE) is skipped: it cannot be shown to hold it. None found is
// not an error.
func Holders(inode uint32) ([]Process, error) {
	d, err := os.Open("/proc")
	if err != nil {
		return nil, fmt.Errorf("sockowner: %w", err)
	}
	pids, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return nil, fmt.Errorf("sockowner: list /proc: %w", err)
	}
	want := []byte("socket:[" + strconv.FormatUint(uint64(inode), 10) + "]")
	buf := make([]byte, 64)
	var out []Process
	for _, pid := range pids {
		if pid == "" || pid[0] < '0' || pid[0] > '9' {
			continue
		}
		if !holds(pid, want, buf) {
			continue
		}
		p, err := readProcess(pid)
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ESRCH) {
			continue // exited since: it holds nothing now
		}
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// holds reports whether /proc/<pid>/fd has a descriptor linking to want.
func holds(pid string, want, buf []byte) bool {
	fd, err := unix.Open("/proc/"+pid+"/fd", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false // gone, or not ours to read
	}
	f := os.NewFile(uintptr(fd), pid)
	defer f.Close()
	names, _ := f.Readdirnames(-1)
	for _, name := range names {
		n, err := unix.Readlinkat(fd, name, buf)
		if err == nil && bytes.Equal(buf[:n], want) {
			return true
		}
	}
	return false
}

// readProcess reads a process's effective uid and gid and its executable.
func readProcess(pid string) (Process, error) {
	id, err := strconv.ParseInt(pid, 10, 32)
	if err != nil {
		return Process{}, fmt.Errorf("sockowner: pid %q: %w", pid, err)
	}
	status, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return Process{}, fmt.Errorf("sockowner: %w", err)
	}
	p := Process{PID: int32(id)}
	var haveUID, haveGID bool
	for line := range strings.Lines(string(status)) {
		if v, ok := strings.CutPrefix(line, "Uid:"); ok {
			p.UID, haveUID = effectiveID(v)
		} else if v, ok := strings.CutPrefix(line, "Gid:"); ok {
			p.GID, haveGID = effectiveID(v)
		}
	}
	if !haveUID || !haveGID {
		return Process{}, fmt.Errorf("sockowner: /proc/%s/status: no Uid or Gid line", pid)
	}
	p.Exe, _ = os.Readlink("/proc/" + pid + "/exe")
	return p, nil
}

// effectiveID is the second of the four ids (real, effective, saved,
// filesystem) of a status Uid:/Gid: line.
func effectiveID(v string) (int32, bool) {
	f := strings.Fields(v)
	if len(f) < 2 {
		return 0, false
	}
	n, err := strconv.ParseUint(f[1], 10, 32)
	if err != nil {
		return 0, false
	}
	return int32(n), true
}
