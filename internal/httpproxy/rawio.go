package httpproxy

import (
	"io"
	"net"
	"os"
	"syscall"
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
	c                    net.Conn
	rc                   syscall.RawConn
	readf, writef, sendf func(uintptr) bool // made once
	rp, wp               []byte
	rn, wn               int
	rerrno, werrno       syscall.Errno

	// SendBeforeRead: the next Write keeps its bytes (send) for the next
	// Read to write; sending: not written yet (sendFunc); sendBlocked: the
	// socket took only part of them.
	sendNext, sending, sendBlocked bool
	send                           []byte
	emptyReads                     int // reads that found nothing (EAGAIN): tests count them
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
	r.readf, r.writef, r.sendf = r.readFunc, r.writeFunc, r.sendFunc
	return r
}

// SendBeforeRead makes the next Write keep its bytes (it returns at once,
// as if they were written) and the next Read write them: from inside its
// poller callback, after the poller forgot any earlier readiness, and
// then wait for the socket to be readable without reading first. A
// request's answer can only come after the request, so the read that
// would find the socket empty (EAGAIN: one system call per request) is
// skipped, and no wake-up is lost: a byte that arrives after the write
// marks the socket ready again. For a caller that writes a request and
// then reads its answer on one goroutine, with nothing buffered from
// before (bytes the peer sent unasked are read only with the answer).
// p must stay as it is until that Read (a bufio.Writer's buffer does
// until its next write).
func (r *RawIO) SendBeforeRead() { r.sendNext = true }

func (r *RawIO) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if r.send != nil {
		return r.sendThenRead(p)
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
			r.emptyReads++
			return false // park until readable
		}
		r.rerrno = e
		return true
	}
}

// sendThenRead writes the kept bytes and reads (SendBeforeRead).
func (r *RawIO) sendThenRead(p []byte) (int, error) {
	r.wp, r.wn, r.werrno, r.sendBlocked, r.sending = r.send, 0, 0, false, true
	r.send = nil
	r.rp, r.rn, r.rerrno = p, 0, 0
	err := r.rc.Read(r.sendf)
	rest := r.wp[r.wn:]
	r.wp, r.rp = nil, nil
	switch {
	case err != nil:
		return 0, err
	case r.werrno != 0:
		return 0, r.opError("write", r.werrno)
	case r.sendBlocked: // the send buffer is full: the rest as any write
		if _, err := r.Write(rest); err != nil {
			return 0, err
		}
		return r.Read(p)
	case r.rerrno != 0:
		return 0, r.opError("read", r.rerrno)
	case r.rn == 0:
		return 0, io.EOF
	}
	return r.rn, nil
}

// sendFunc writes the kept bytes on its first call and then asks to wait
// for readability; it reads on the later calls.
func (r *RawIO) sendFunc(fd uintptr) bool {
	if r.sending {
		r.sending = false
		if !r.writeFunc(fd) {
			r.sendBlocked = true
			return true
		}
		return r.werrno != 0 // sent: wait until readable
	}
	return r.readFunc(fd)
}

func (r *RawIO) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if r.sendNext {
		r.sendNext = false
		r.send = p
		return len(p), nil
	}
	r.wp, r.wn, r.werrno = p, 0, 0
	err := r.rc.Write(r.writef)
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
