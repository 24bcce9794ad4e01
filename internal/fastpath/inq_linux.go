package fastpath

import (
	"errors"
	"fmt"
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// ReadableCountWorks reports whether FIONREAD (SIOCINQ) on a socket the
// fast path tracks still counts the bytes waiting in it. On some kernels
// (6.18 among them) a socket in a sockmap answers it from the sockmap's
// own queue only, so a local client or endpoint the fast path tracks reads
// 0 while bytes wait, for as long as it is tracked; reads are not
// affected. A program that sizes its reads by it (Java's available(), for
// one) would wait. The probe connects to a listener of its own on
// 127.0.0.1, registered for the time of the probe, and sends one byte.
func (f *FastPath) ReadableCountWorks() (bool, error) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return false, fmt.Errorf("fastpath: probe: %w", err)
	}
	defer ln.Close()
	ap := ln.Addr().(*net.TCPAddr).AddrPort()
	if err := f.AddListener(ap); err != nil {
		return false, err
	}
	defer f.RemoveListener(ap)
	c, err := net.DialTimeout("tcp4", ap.String(), 2*time.Second)
	if err != nil {
		return false, fmt.Errorf("fastpath: probe: %w", err)
	}
	defer c.Close()
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(2 * time.Second))
	a, err := ln.Accept()
	if err != nil {
		return false, fmt.Errorf("fastpath: probe: %w", err)
	}
	defer a.Close()
	// The probe means something only if sock_ops tracked the client's
	// socket (the agent inside the cgroup hierarchy it is attached to).
	if t, ok := tupleOf(a.(*net.TCPConn)); ok {
		far := t.reverse()
		var cookie [8]byte
		if f.sockhash.Lookup(far[:], cookie[:]) != nil {
			return false, errors.New("fastpath: probe: its socket was not tracked (is the agent outside the cgroup hierarchy the programs are attached to?)")
		}
	}
	if _, err := a.Write([]byte{1}); err != nil {
		return false, fmt.Errorf("fastpath: probe: %w", err)
	}
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return false, fmt.Errorf("fastpath: probe: %w", err)
	}
	n, readable := 0, false
	var perr error
	if err := rc.Control(func(fd uintptr) {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			k, err := unix.Poll(fds, 2000)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				perr = err
				return
			}
			readable = k == 1 && fds[0].Revents&unix.POLLIN != 0
			break
		}
		n, perr = unix.IoctlGetInt(int(fd), unix.SIOCINQ)
	}); err != nil {
		return false, fmt.Errorf("fastpath: probe: %w", err)
	}
	if perr != nil {
		return false, fmt.Errorf("fastpath: probe: %w", perr)
	}
	if !readable {
		return false, errors.New("fastpath: probe: the byte sent did not arrive within 2 s")
	}
	return n == 1, nil
}
