package proxy

import (
	"errors"
	"io"
	"sync"
)

// A direction that neither end can copy by itself (no io.WriterTo on the
// source, no io.ReaderFrom on the destination: TLS connections, wrapped
// connections) would get io.Copy's own 32 KiB buffer for its whole life,
// idle or not: 64 KiB per relayed pair, most of a relay's memory per idle
// session. Such a direction waits for data in a small buffer of its own
// and takes a large pooled one only while reads fill the small one (a
// burst); a read that would have fit the small buffer ends the burst and
// returns the large one to the pool. Each direction still holds one buffer
// at a time and reads only after its last write finished, so a side that
// stops reading stops the other side's reads (backpressure), as io.Copy.
const (
	smallCopyBuf = 2 << 10
	largeCopyBuf = 32 << 10 // io.Copy's size: bulk flows copy as before
)

var largeCopyBufs = sync.Pool{New: func() any {
	b := make([]byte, largeCopyBuf)
	return &b
}}

// bulkCopyBuf is CopyWhileBulk's burst buffer: for a copy whose every
// write costs more than the write (the kernel fast path publishes a count
// after each), eight times io.Copy's.
const bulkCopyBuf = 256 << 10

var bulkCopyBufs = sync.Pool{New: func() any {
	b := make([]byte, bulkCopyBuf)
	return &b
}}

// errInvalidWrite is io's errInvalidWrite: a Write that claimed more bytes
// than it was given.
var errInvalidWrite = errors.New("invalid write result")

// copyConn copies src to dst until src ends, like io.Copy. When src or dst
// can do the copy itself (splice(2) between two *net.TCPConn, the mesh
// streams' adaptive copy), it is io.Copy on the interface values so that
// fast path is kept; otherwise it is lazyCopy.
func copyConn(dst io.Writer, src io.Reader) (int64, error) {
	if _, ok := src.(io.WriterTo); ok {
		return io.Copy(dst, src)
	}
	if _, ok := dst.(io.ReaderFrom); ok {
		return io.Copy(dst, src)
	}
	return lazyCopy(dst, src)
}

// lazyCopy is io.Copy whose buffer is small while src is idle and large
// only during bursts (see smallCopyBuf).
func lazyCopy(dst io.Writer, src io.Reader) (written int64, err error) {
	written, _, err = CopyWhile(dst, src, nil)
	return written, err
}

// CopyWhile copies src to dst as the relays do for connections that
// cannot copy by themselves (a small buffer while src is idle, a large
// pooled one during bursts), until src ends, a read or write fails, or,
// after a write, more (if not nil) reports false: then stopped is true and
// the caller may go on copying another way.
func CopyWhile(dst io.Writer, src io.Reader, more func() bool) (written int64, stopped bool, err error) {
	return copyWhile(dst, src, more, &largeCopyBufs)
}

// CopyWhileBulk is CopyWhile with 256 KiB burst buffers (bulkCopyBuf), for
// copies with a cost per write beyond the write itself: fewer, larger
// writes. BenchmarkOneWay (internal/fastpath), a sender that never pauses
// on the fast path's agent leg: 1.8–3.0 GB/s against 1.0–1.3 with 32 KiB.
func CopyWhileBulk(dst io.Writer, src io.Reader, more func() bool) (written int64, stopped bool, err error) {
	return copyWhile(dst, src, more, &bulkCopyBufs)
}

func copyWhile(dst io.Writer, src io.Reader, more func() bool, pool *sync.Pool) (written int64, stopped bool, err error) {
	var small [smallCopyBuf]byte
	buf := small[:]
	var large *[]byte
	defer func() {
		if large != nil {
			pool.Put(large)
		}
	}()
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			m, werr := dst.Write(buf[:n])
			if m < 0 || m > n {
				m, werr = 0, errInvalidWrite
			}
			written += int64(m)
			if werr != nil {
				return written, false, werr
			}
			if m != n {
				return written, false, io.ErrShortWrite
			}
		}
		if rerr != nil {
			if rerr == io.EOF {
				return written, false, nil
			}
			return written, false, rerr
		}
		if more != nil && !more() {
			return written, true, nil
		}
		switch {
		case large == nil && n == len(buf):
			// A full small read: more is likely waiting.
			large = pool.Get().(*[]byte)
			buf = *large
		case large != nil && n <= smallCopyBuf:
			// The burst is over: wait in the small buffer again.
			pool.Put(large)
			large = nil
			buf = small[:]
		}
	}
}
