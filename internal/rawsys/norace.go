//go:build !race

// Package rawsys reads and writes a non-blocking socket's descriptor
// without the scheduler's system call state, for the callbacks of a
// syscall.RawConn (httpproxy.RawIO, h2srv's read loop). net.Conn enters
// that state for each read and write (syscall.Syscall); a P left in it
// past one sysmon tick is handed to another thread, a futex wake and a
// context switch. A read or write of a non-blocking socket does not block.
package rawsys

import (
	"syscall"
	"unsafe"
)

// Read is read(2) of a non-empty p.
func Read(fd uintptr, p []byte) (int, syscall.Errno) {
	n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	return int(n), e
}

// Write is write(2) of a non-empty p.
func Write(fd uintptr, p []byte) (int, syscall.Errno) {
	n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	return int(n), e
}
