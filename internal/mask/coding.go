package mask

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"errors"
	"fmt"
	"io"
)

// Compressed bodies (Config.OnCompressed decode): the body is decompressed
// as it is read, masked, and compressed again in the same coding, at
// flate's fastest level (the next hop is a WAN link, not storage).

const (
	bombFree  = 1 << 20 // decompressed bytes allowed whatever the ratio
	bombRatio = 100     // beyond them, at most this many per compressed byte
)

// codec is the decompressing side: an io.Reader of the decoded body.
type codec struct {
	kind   Kind
	src    io.Reader
	in     int64 // compressed bytes read
	srcErr error // the body's own read error (not EOF)
	dec    io.Reader
	out    int64 // decompressed bytes
	empty  bool  // the body had no bytes at all: it stays empty

	buf bytes.Buffer   // compressed output
	enc io.WriteCloser // on buf
}

func newCodec(src io.Reader, kind Kind) *codec {
	c := &codec{kind: kind, src: src}
	switch kind {
	case kindGzip:
		w, _ := gzip.NewWriterLevel(&c.buf, flate.BestSpeed)
		c.enc = w
	default:
		w, _ := zlib.NewWriterLevel(&c.buf, flate.BestSpeed)
		c.enc = w
	}
	return c
}

func (c *codec) name() string {
	if c.kind == kindGzip {
		return "gzip"
	}
	return "deflate"
}

// countedRead reads the compressed body, counting it.
type countedRead struct{ c *codec }

func (r countedRead) Read(p []byte) (int, error) {
	n, err := r.c.src.Read(p)
	r.c.in += int64(n)
	if err != nil && err != io.EOF {
		r.c.srcErr = err
	}
	return n, err
}

// Read returns decompressed bytes.
func (c *codec) Read(p []byte) (int, error) {
	if c.dec == nil {
		var err error
		switch c.kind {
		case kindGzip:
			c.dec, err = gzip.NewReader(countedRead{c})
		default:
			c.dec, err = zlib.NewReader(countedRead{c})
		}
		if err == io.EOF && c.in == 0 && c.srcErr == nil {
			c.empty = true
			return 0, io.EOF
		}
		if err != nil {
			return 0, c.fail(err)
		}
	}
	n, err := c.dec.Read(p)
	c.out += int64(n)
	if c.out > bombFree+bombRatio*c.in {
		return 0, fmt.Errorf("%w: %s body decompresses to more than %d times its size", ErrMalformed, c.name(), bombRatio)
	}
	if err != nil && err != io.EOF {
		err = c.fail(err)
	}
	return n, err
}

// fail returns the body's own read error (a client that broke off), or
// else err as malformed input.
func (c *codec) fail(err error) error {
	if c.srcErr != nil {
		return c.srcErr
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		err = errors.New("unexpected end of body")
	}
	return fmt.Errorf("%w: %s: %v", ErrMalformed, c.name(), err)
}

// encode appends plain, compressed, to dst[:0]; final ends the stream.
func (c *codec) encode(dst, plain []byte, final bool) []byte {
	if c.empty {
		return dst[:0]
	}
	c.buf.Reset()
	c.enc.Write(plain) // into a bytes.Buffer: cannot fail
	if final {
		c.enc.Close()
	}
	return append(dst[:0], c.buf.Bytes()...)
}
