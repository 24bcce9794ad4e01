package httpproxy

import "golang.org/x/sys/unix"

// The check of a pool connection idle a while, before its reuse (get).

// alive checks a connection that has been idle a while: the endpoint may
// have closed it (its idle timeout). One non-blocking MSG_PEEK on TCP;
// connections without a file descriptor (mesh streams) are assumed alive
// (a failure on reuse is retried, see RoundTrip).
func (pc *poolConn) alive() bool {
	if pc.br.Buffered() > 0 {
		return false // bytes nobody asked for
	}
	return !pc.pending()
}

// pending reports whether bytes, the end or an error wait on the socket
// (false without a file descriptor).
func (pc *poolConn) pending() bool {
	if pc.rc == nil {
		return false
	}
	pc.wire.unrecheck() // a deadline passed would fail the peek
	pc.peeked = false
	return pc.rc.Read(pc.peekFn) != nil || !pc.peeked
}

// peek is pending's look at the socket (made once: peekFn).
func (pc *poolConn) peek(fd uintptr) bool {
	var b [1]byte
	_, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
	pc.peeked = err == unix.EAGAIN
	return true
}
