//go:build race

package rawsys

import "syscall"

// The race detector learns the order that a write and the read of its bytes
// give from syscall.Read and syscall.Write, which RawSyscall skips: without
// it, whatever a goroutine did before a write looks concurrent with what
// the reader does after. Race builds read and write with those.

func Read(fd uintptr, p []byte) (int, syscall.Errno) {
	n, err := syscall.Read(int(fd), p)
	if err != nil {
		return 0, err.(syscall.Errno)
	}
	return n, 0
}

func Write(fd uintptr, p []byte) (int, syscall.Errno) {
	n, err := syscall.Write(int(fd), p)
	if err != nil {
		return 0, err.(syscall.Errno)
	}
	return n, 0
}
