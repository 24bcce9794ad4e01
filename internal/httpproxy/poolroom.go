package httpproxy

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// SendRoomer is what a BodyWaiter asks of the connection a request body
// goes to (BodyWaits).
type SendRoomer interface {
	// SendRoom is about how many more bytes of the body the connection
	// takes without waiting for its endpoint to read them (at the least:
	// the kernel counts its own overhead per segment too); -1 if it
	// cannot tell.
	SendRoom() int
}

// sendRoomOverhead divides a socket's free send buffer (SO_MEMINFO: its
// SO_SNDBUF less what it holds, both counted with the kernel's overhead
// of each buffer) into the payload it takes at the least: on loopback
// with an endpoint that advertised a small MSS (536) and the least
// receive window, a write stalled with 28 KiB of payload in 67 KiB of
// buffers (2.4x); with a large MSS the overhead is a few percent.
const sendRoomOverhead = 3

// SendRoom is the connection's SendRoomer: its socket's free send buffer
// (sendRoomOverhead) less what its writer holds; -1 for a connection with
// no socket of its own (a mesh stream, TLS), whose writes a body waits
// for in ways it cannot ask.
func (pc *poolConn) SendRoom() int {
	if pc.rc == nil {
		return -1
	}
	if pc.roomf == nil {
		pc.roomf = pc.roomFunc // one func value per connection, not one per ask
	}
	pc.room = -1
	if pc.rc.Control(pc.roomf) != nil || pc.room < 0 {
		return -1
	}
	return max(pc.room-pc.bw.Buffered(), 0)
}

func (pc *poolConn) roomFunc(fd uintptr) {
	var mi [unix.SK_MEMINFO_VARS]uint32
	n := uint32(len(mi) * 4)
	_, _, e := syscall.RawSyscall6(syscall.SYS_GETSOCKOPT, fd, unix.SOL_SOCKET, unix.SO_MEMINFO,
		uintptr(unsafe.Pointer(&mi[0])), uintptr(unsafe.Pointer(&n)), 0)
	if e != 0 || n < (unix.SK_MEMINFO_WMEM_QUEUED+1)*4 {
		return
	}
	pc.room = max(int(mi[unix.SK_MEMINFO_SNDBUF])-int(mi[unix.SK_MEMINFO_WMEM_QUEUED]), 0) / sendRoomOverhead
}
