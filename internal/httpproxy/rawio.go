package httpproxy

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"time"
)

// RawIO reads and writes a socket with syscall.RawSyscall inside the
// callbacks of its syscall.RawConn, which park on the poller as
// net.Conn's Read and Write do (deadlines included).
//
// net.Conn enters the scheduler's system call state for each read and
// write (syscall.Syscall). A P left in that state past one sysmon tick
// (20 µs) is handed to another thread: a futex wake and a context switch,
// and sysmon keeps waking every 20 µs. A read or write of a non-blocking
// socket does not block, so the fast path's do without that state.
//
// One Read and one Write may run at a time, each with the other.
type RawIO struct {
	c              net.Conn
	rc             syscall.RawConn
	readf, writef  func(uintptr) bool // made once
	rp, wp         []byte
	rn, wn         int
	rerrno, werrno syscall.Errno

	// OnStall, if set, is called every StallAfter while a Write waits for
	// a full socket (the peer reads slowly or not at all): an error ends
	// the Write with it, nil lets it wait on. Set before the first Write.
	// The write deadline that times it is armed only once a write finds
	// the socket full, and cleared after: a Write that never waits pays
	// nothing.
	OnStall    func() error
	StallAfter time.Duration
	armed      bool // the stall's write deadline is set
}

// NewRawIO returns the RawIO of c, or nil if c has no file descriptor.
func NewRawIO(c net.Conn) *RawIO {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	r := &RawIO{c: c, rc: rc}
	r.readf, r.writef = r.readFunc, r.writeFunc
	return r
}

func (r *RawIO) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r.rp, r.rn, r.rerrno = p, 0, 0
	err := r.rc.Read(r.readf)
	r.rp = nil
	switch {
	case err != nil:
		return 0, err
	case r.rerrno != 0:
		return 0, r.opError("read", r.rerrno)
	case r.rn == 0:
		return 0, io.EOF
	}
	return r.rn, nil
}

func (r *RawIO) readFunc(fd uintptr) bool {
	for {
		n, e := rawRead(fd, r.rp)
		switch e {
		case 0:
			r.rn = n
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false // park until readable
		}
		r.rerrno = e
		return true
	}
}

func (r *RawIO) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r.wp, r.wn, r.werrno = p, 0, 0
	err := r.rc.Write(r.writef)
	for err != nil && r.armed && errors.Is(err, os.ErrDeadlineExceeded) {
		if err = r.OnStall(); err != nil {
			break
		}
		// The deadline that fired stays expired (the poller fails every
		// write at once until it is set again): armed anew.
		r.c.SetWriteDeadline(time.Now().Add(r.StallAfter))
		err = r.rc.Write(r.writef)
	}
	if r.armed {
		r.armed = false
		r.c.SetWriteDeadline(time.Time{})
	}
	r.wp = nil
	if err == nil && r.werrno != 0 {
		err = r.opError("write", r.werrno)
	}
	return r.wn, err
}

func (r *RawIO) writeFunc(fd uintptr) bool {
	for r.wn < len(r.wp) {
		n, e := rawWrite(fd, r.wp[r.wn:])
		switch e {
		case 0:
			r.wn += n
			continue
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			if r.OnStall != nil && !r.armed {
				r.armed = true
				r.c.SetWriteDeadline(time.Now().Add(r.StallAfter))
			}
			return false // park until writable
		}
		r.werrno = e
		return true
	}
	return true
}

// opError wraps a failed system call as net.Conn's Read and Write do.
func (r *RawIO) opError(op string, e syscall.Errno) error {
	return &net.OpError{Op: op, Net: r.c.LocalAddr().Network(), Source: r.c.LocalAddr(), Addr: r.c.RemoteAddr(),
		Err: os.NewSyscallError(op, e)}
}

// rawTCPConn is a TCP connection whose Read and Write go through its RawIO;
// its other methods (deadlines, Close, CloseWrite) are the connection's.
type rawTCPConn struct {
	*net.TCPConn
	raw *RawIO
}

func (c *rawTCPConn) Read(p []byte) (int, error)  { return c.raw.Read(p) }
func (c *rawTCPConn) Write(p []byte) (int, error) { return c.raw.Write(p) }

// RawTCP returns c reading and writing without the scheduler's system call
// state (RawIO) if it is a TCP connection, else c. Its Reads must not run
// concurrently with each other, nor its Writes.
func RawTCP(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	if raw := NewRawIO(tc); raw != nil {
		return &rawTCPConn{TCPConn: tc, raw: raw}
	}
	return c
}
