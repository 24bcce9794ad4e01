package httpproxy

import (
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fogmesh/fogmesh/internal/rawsys"
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
	rwaited        bool               // the last Read found the socket empty first (Waited)
	fusedf         func(uintptr) bool // made once (WriteRead)
	inqf           func(uintptr)      // made at the first Queued
	inq            int
	fw             []byte // WriteRead's bytes to write; nil once tried
	fwn            int    // how many of them went out

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
	r.readf, r.writef, r.fusedf = r.readFunc, r.writeFunc, r.fusedFunc
	return r
}

func (r *RawIO) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r.rp, r.rn, r.rerrno, r.rwaited = p, 0, 0, false
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
		n, e := rawsys.Read(fd, r.rp)
		if h := testHookRead.Load(); h != nil {
			(*h)(e == syscall.EAGAIN)
		}
		switch e {
		case 0:
			r.rn = n
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			r.rwaited = true
			return false // park until readable
		}
		r.rerrno = e
		return true
	}
}

// Queued is how many bytes the socket holds for reading (FIONREAD), what
// Reads get without waiting; -1 if it cannot tell. Not while a Read runs.
func (r *RawIO) Queued() int {
	if r.inqf == nil {
		r.inqf = r.inqFunc
	}
	r.inq = -1
	if err := r.rc.Control(r.inqf); err != nil {
		return -1
	}
	return r.inq
}

func (r *RawIO) inqFunc(fd uintptr) {
	if n, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ); err == nil {
		r.inq = n
	}
}

// Waited reports whether the last Read found the socket empty at first
// and waited for the peer: false, its bytes (or end) were there already.
func (r *RawIO) Waited() bool { return r.rwaited }

// WriteRead writes w and then reads into p as Write and Read would, but
// with one system call fewer when the peer answers w: it does not read
// the socket once at once after the write, which before the answer came
// finds it empty (EAGAIN), but waits for the poller to report it readable.
// It reports how many bytes of w it wrote: if not all of w went out in one
// non-blocking write (the socket was full, an error, a read deadline
// already past), it read nothing, and the caller writes w[wn:] (Write, with
// its deadline and OnStall) and then reads. n and err are the read's
// otherwise. No Write may run at the same time (the write takes no write
// lock), and w must not change until WriteRead returns.
//
// Why no readiness is lost. RawConn.Read (internal/poll FD.RawRead) takes
// the read lock, then clears the descriptor's ready flag (prepareRead:
// runtime poll_runtime_pollReset stores pdNil in pd.rg), then calls f until
// it returns true, parking in between (waitRead: netpollblock, which
// returns at once if the flag was set to pdReady meanwhile, else parks
// until netpollready sets it). Its first call of f here writes w and
// returns false without reading. Every byte the peer sends in answer to w
// arrives after that write, so after the flag was cleared; the descriptor
// is in epoll edge-triggered for reading (netpoll_epoll.go: EPOLLIN |
// EPOLLRDHUP | EPOLLET), and Linux queues an edge for every arrival (and
// for a FIN or a reset), which the poller turns into pdReady or a wake of
// the parked reader: waitRead returns, and the next call of f reads. A
// stale edge (bytes read before) wakes it for nothing: one read finds the
// socket empty and it parks again.
//
// What it does not cover: bytes the peer sent NOT in answer to w, after
// the caller's last read of the socket and before WriteRead cleared the
// flag (a pipelined request, a FIN of a client that half-closed): their
// edge was reported before the flag was cleared, so the wait does not see
// them and parks until more bytes come. A caller for which the peer may
// send unasked must bound the wait with a read deadline and then read
// anyway (h1fast's fuseRecheck).
func (r *RawIO) WriteRead(w, p []byte) (wn, n int, err error) {
	if len(w) == 0 {
		n, err = r.Read(p)
		return 0, n, err
	}
	if len(p) == 0 {
		return 0, 0, nil
	}
	r.fw, r.fwn = w, 0
	r.rp, r.rn, r.rerrno, r.rwaited = p, 0, 0, false
	err = r.rc.Read(r.fusedf)
	r.fw, r.rp = nil, nil
	if wn = r.fwn; wn < len(w) {
		return wn, 0, nil // the caller writes the rest
	}
	switch {
	case err != nil:
		return wn, 0, err
	case r.rerrno != 0:
		return wn, 0, r.opError("read", r.rerrno)
	case r.rn == 0:
		return wn, 0, io.EOF
	}
	return wn, r.rn, nil
}

// fusedFunc is WriteRead's function: the write at its first call, then
// reads.
func (r *RawIO) fusedFunc(fd uintptr) bool {
	if w := r.fw; w != nil {
		r.fw = nil
		for {
			n, e := rawsys.Write(fd, w)
			if e == syscall.EINTR {
				continue
			}
			if e == 0 {
				r.fwn = n
			}
			break
		}
		// Written whole: wait for the answer (see WriteRead). Else the
		// caller finishes the write its own way.
		return r.fwn < len(w)
	}
	return r.readFunc(fd)
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
		n, e := rawsys.Write(fd, r.wp[r.wn:])
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

// testHookRead, if set, is called after each read with whether it found
// the socket empty (tests count them: SetReadHookForTest).
var testHookRead atomic.Pointer[func(empty bool)]

// SetReadHookForTest makes every RawIO read call f with whether it found
// the socket empty, until it is called again with nil.
func SetReadHookForTest(f func(empty bool)) {
	if f == nil {
		testHookRead.Store(nil)
		return
	}
	testHookRead.Store(&f)
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
