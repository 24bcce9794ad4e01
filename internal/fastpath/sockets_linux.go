package fastpath

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// The sockets' side of the fast path: map keys, socket options, the
// network namespace and the cgroup v2 hierarchy.

// tuple is a socket's key in the maps: local IPv4, remote IPv4 (network
// order), local port, remote port (host order, native-endian u32).
type tuple [tupleSize]byte

const (
	tupleSize = 16
	linkSize  = tupleSize + 16 // peer, forwarded, cookie
	countSize = 24             // sequence when established, redirected, cookie
)

func tupleOf(c *net.TCPConn) (tuple, bool) {
	l, ok1 := c.LocalAddr().(*net.TCPAddr)
	r, ok2 := c.RemoteAddr().(*net.TCPAddr)
	if !ok1 || !ok2 {
		return tuple{}, false
	}
	return makeTuple(l.AddrPort(), r.AddrPort())
}

func makeTuple(local, remote netip.AddrPort) (tuple, bool) {
	la, ra := local.Addr().Unmap(), remote.Addr().Unmap()
	if !la.Is4() || !ra.Is4() {
		return tuple{}, false
	}
	var t tuple
	l4, r4 := la.As4(), ra.As4()
	copy(t[0:4], l4[:])
	copy(t[4:8], r4[:])
	binary.NativeEndian.PutUint32(t[8:], uint32(local.Port()))
	binary.NativeEndian.PutUint32(t[12:], uint32(remote.Port()))
	return t, true
}

func (t tuple) reverse() tuple {
	var r tuple
	copy(r[0:4], t[4:8])
	copy(r[4:8], t[0:4])
	copy(r[8:12], t[12:16])
	copy(r[12:16], t[8:12])
	return r
}

func portKey(ap netip.AddrPort) ([8]byte, bool) {
	a := ap.Addr().Unmap()
	if !a.Is4() {
		return [8]byte{}, false
	}
	var k [8]byte
	a4 := a.As4()
	copy(k[:4], a4[:])
	binary.NativeEndian.PutUint32(k[4:], uint32(ap.Port()))
	return k, true
}

func linkValue(peer tuple, forwarded, cookie uint64) []byte {
	v := make([]byte, linkSize)
	putLink(v, peer, forwarded, cookie)
	return v
}

// putLink writes a link value into v (linkSize bytes).
func putLink(v []byte, peer tuple, forwarded, cookie uint64) {
	copy(v, peer[:])
	binary.NativeEndian.PutUint64(v[tupleSize:], forwarded)
	binary.NativeEndian.PutUint64(v[tupleSize+8:], cookie)
}

// sndBufForce is the send buffer of the agent's linked sockets: room for
// maxQueued bytes (and their overhead) redirected into them, and one
// message beyond, so a redirect never finds them full.
const sndBufForce = 4 * maxQueued

// setSndBuf gives c's socket sndBufForce (SO_SNDBUFFORCE: above wmem_max;
// the kernel doubles it for overhead).
func setSndBuf(c *net.TCPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sndBufForce)
	}); err != nil {
		return err
	}
	return serr
}

// synData reports whether the agent's socket took data in the client's SYN
// (TCP Fast Open; the agent's listeners do not enable it). The program's
// base is the client's ISN+1 (prog_linux.go), so such bytes would be
// accounted for; the check stays as a guard for a case no test covers:
// the pair stays with the agent.
func synData(c *net.TCPConn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return true
	}
	var info *unix.TCPInfo
	if err := rc.Control(func(fd uintptr) {
		info, _ = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil || info == nil {
		return true
	}
	return info.Options&tcpiOptSynData != 0
}

// tcpiOptSynData is TCPI_OPT_SYN_DATA (linux/tcp.h): the SYN carried data.
const tcpiOptSynData = 32

// putSocket inserts c's socket into the sockhash under t.
func putSocket(m *ebpf.Map, t tuple, c *net.TCPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var perr error
	if err := rc.Control(func(fd uintptr) {
		perr = m.Put(t[:], uint64(fd))
	}); err != nil {
		return err
	}
	return perr
}

// netnsCookie is the kernel's cookie of this process's network namespace
// (SO_NETNS_COOKIE, Linux 5.14 and later).
func netnsCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("fastpath: netns cookie: %w", err)
	}
	defer unix.Close(fd)
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("fastpath: netns cookie (SO_NETNS_COOKIE needs Linux 5.14): %w", err)
	}
	return c, nil
}

// cgroup2Dir finds the cgroup v2 hierarchy's mount point, or mounts one at
// mountDir (as root) when none is mounted (mounted true).
func cgroup2Dir(mountDir string) (dir string, mounted bool, err error) {
	if dir, err := mountedCgroup2(); err != nil || dir != "" {
		return dir, false, err
	}
	if mountDir == "" {
		return "", false, errors.New("fastpath: no cgroup v2 hierarchy is mounted and no directory was given to mount one")
	}
	if err := os.MkdirAll(mountDir, 0o755); err != nil {
		return "", false, fmt.Errorf("fastpath: %w", err)
	}
	if err := unix.Mount("none", mountDir, "cgroup2", 0, ""); err != nil {
		return "", false, fmt.Errorf("fastpath: mount cgroup2 at %s: %w", mountDir, err)
	}
	return mountDir, true, nil
}

// mountedCgroup2 returns the first cgroup2 mount point in /proc/self/mounts.
func mountedCgroup2() (string, error) {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return "", fmt.Errorf("fastpath: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 3 && fields[2] == "cgroup2" {
			return fields[1], nil
		}
	}
	return "", sc.Err()
}
