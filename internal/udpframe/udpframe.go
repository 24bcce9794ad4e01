// Package udpframe frames UDP datagrams on a byte stream (a mesh stream
// carrying one UDP flow): each datagram is a 2-byte big-endian length
// followed by that many bytes. A zero length is an empty datagram, which
// UDP allows. It holds the wire format only, with no network I/O.
package udpframe

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// MaxLen is the largest datagram a frame can carry (the 2-byte length).
const MaxLen = 0xffff

// ErrTooLarge is returned (wrapped) by Append for a datagram over MaxLen
// and by Reader.Next for a frame longer than the reader's limit; the caller
// drops the datagram and counts it.
var ErrTooLarge = errors.New("datagram too large")

// Append appends p as one frame to dst. A datagram over MaxLen cannot be
// framed: dst is returned unchanged with ErrTooLarge.
func Append(dst, p []byte) ([]byte, error) {
	if len(p) > MaxLen {
		return dst, fmt.Errorf("%w: %d bytes, max %d", ErrTooLarge, len(p), MaxLen)
	}
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(p)))
	return append(dst, p...), nil
}

// Reader reads frames from a stream.
type Reader struct {
	r   *bufio.Reader
	max int
}

// NewReader reads frames from r, accepting datagrams of at most max bytes
// (0 or over MaxLen: MaxLen). The buffer it allocates is small; Next
// copies each datagram into the caller's buffer.
func NewReader(r io.Reader, max int) *Reader {
	if max <= 0 || max > MaxLen {
		max = MaxLen
	}
	return &Reader{r: bufio.NewReaderSize(r, 16<<10), max: max}
}

// Next reads the next frame into buf, which must hold the reader's max
// bytes, and returns the datagram's length. A frame longer than max is
// skipped (its bytes read and discarded) and reported as ErrTooLarge: the
// stream stays usable, and the caller counts the drop and calls Next
// again. A stream that ends between frames returns io.EOF; one that ends
// inside a frame returns io.ErrUnexpectedEOF.
func (r *Reader) Next(buf []byte) (int, error) {
	var pre [2]byte
	if _, err := io.ReadFull(r.r, pre[:]); err != nil {
		return 0, err // io.EOF before the first byte, else ErrUnexpectedEOF
	}
	n := int(binary.BigEndian.Uint16(pre[:]))
	if n > r.max {
		if _, err := r.r.Discard(n); err != nil {
			return 0, fmt.Errorf("skip a frame of %d bytes: %w", n, unexpected(err))
		}
		return 0, fmt.Errorf("%w: frame of %d bytes, max %d", ErrTooLarge, n, r.max)
	}
	if len(buf) < n {
		return 0, fmt.Errorf("udpframe: buffer of %d bytes for a frame of %d", len(buf), n)
	}
	if _, err := io.ReadFull(r.r, buf[:n]); err != nil {
		return 0, unexpected(err)
	}
	return n, nil
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
