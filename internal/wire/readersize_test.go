package wire

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

// A reader with a small buffer reads frames shorter and much longer than
// it, back to back, the same as NewReader.
func TestReaderSizeReadsFramesPastItsBuffer(t *testing.T) {
	var buf bytes.Buffer
	sizes := []int{0, 10, 100, 4000, 70000, 3}
	for i, n := range sizes {
		if err := Write(&buf, &Message{Type: TypeError, Version: uint64(i), Error: strings.Repeat("e", n)}); err != nil {
			t.Fatal(err)
		}
	}
	// One byte at a time from below: the worst case for the buffer.
	r := NewReaderSize(io.LimitReader(oneByte{&buf}, int64(buf.Len())), 16)
	for i, n := range sizes {
		m, err := r.Read()
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if m.Version != uint64(i) || len(m.Error) != n {
			t.Fatalf("frame %d: version %d, %d bytes; want %d bytes", i, m.Version, len(m.Error), n)
		}
	}
	if _, err := r.Read(); err != io.EOF {
		t.Fatalf("want clean EOF, got %v", err)
	}
}

type oneByte struct{ r io.Reader }

func (o oneByte) Read(p []byte) (int, error) {
	if len(p) > 1 {
		p = p[:1]
	}
	return o.r.Read(p)
}
