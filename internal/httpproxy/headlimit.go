package httpproxy

import (
	"errors"
	"io"
	"math"
)

// headLimit is the reader under a pool connection's bufio.Reader: while
// a response head is read, left bounds what may come in.
type headLimit struct {
	r    io.Reader
	left int64
}

const noHeadLimit = math.MaxInt64

// errHeadTooLarge: the endpoint's response head went past
// MaxResponseHeadBytes.
var errHeadTooLarge = errors.New("httpproxy: the endpoint's response head is too large")

func (l *headLimit) Read(p []byte) (int, error) {
	if l.left <= 0 {
		return 0, errHeadTooLarge
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	if l.left != noHeadLimit {
		l.left -= int64(n)
	}
	return n, err
}
