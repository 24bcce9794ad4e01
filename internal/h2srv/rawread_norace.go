//go:build !race

package h2srv

import (
	"syscall"
	"unsafe"
)

// rawRead is read(2) of a non-empty p without the scheduler's system call
// state (as httpproxy.RawIO's): the socket is non-blocking.
func rawRead(fd uintptr, p []byte) (int, syscall.Errno) {
	n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	return int(n), e
}
