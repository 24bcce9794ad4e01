//go:build race

package h2srv

import "syscall"

// rawRead is syscall.Read under the race detector, which then sees the
// write to p.
func rawRead(fd uintptr, p []byte) (int, syscall.Errno) {
	n, err := syscall.Read(int(fd), p)
	if err != nil {
		return 0, err.(syscall.Errno)
	}
	return n, 0
}
