package udpframe

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestAppendAndNext(t *testing.T) {
	var stream []byte
	dgrams := [][]byte{[]byte("hello"), {}, bytes.Repeat([]byte{7}, MaxLen), []byte("x")}
	for _, d := range dgrams {
		var err error
		if stream, err = Append(stream, d); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.HasPrefix(stream, []byte("\x00\x05hello\x00\x00\xff\xff")) {
		t.Fatalf("wire form %q...", stream[:12])
	}
	r := NewReader(bytes.NewReader(stream), 0)
	buf := make([]byte, MaxLen)
	for i, want := range dgrams {
		n, err := r.Next(buf)
		if err != nil || !bytes.Equal(buf[:n], want) {
			t.Fatalf("frame %d: %d bytes, %v", i, n, err)
		}
	}
	if _, err := r.Next(buf); err != io.EOF {
		t.Fatalf("after the last frame: %v, want io.EOF", err)
	}
}

func TestAppendTooLarge(t *testing.T) {
	dst := []byte("keep")
	out, err := Append(dst, make([]byte, MaxLen+1))
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "65536 bytes, max 65535") || string(out) != "keep" {
		t.Fatalf("Append of 65536 bytes: %q, %v", out, err)
	}
}

// TestNextSkipsOversize: a frame over the reader's limit is skipped whole
// and reported; the next frame reads fine.
func TestNextSkipsOversize(t *testing.T) {
	stream, _ := Append(nil, make([]byte, 100))
	stream, _ = Append(stream, []byte("ok"))
	r := NewReader(bytes.NewReader(stream), 10)
	buf := make([]byte, 10)
	if _, err := r.Next(buf); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversize frame: %v, want ErrTooLarge", err)
	}
	if n, err := r.Next(buf); err != nil || string(buf[:n]) != "ok" {
		t.Fatalf("next frame: %q, %v", buf[:n], err)
	}
}

func TestNextTruncated(t *testing.T) {
	for _, in := range []string{"\x00", "\x00\x05hel", "\x01\x00abc"} {
		max := 0
		if in == "\x01\x00abc" {
			max = 10 // oversize and truncated: the skip fails
		}
		_, err := NewReader(strings.NewReader(in), max).Next(make([]byte, MaxLen))
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("%q: %v, want io.ErrUnexpectedEOF", in, err)
		}
	}
}

func TestNextSmallBuffer(t *testing.T) {
	stream, _ := Append(nil, []byte("hello"))
	if _, err := NewReader(bytes.NewReader(stream), 0).Next(make([]byte, 3)); err == nil {
		t.Fatal("a 5-byte frame into a 3-byte buffer: no error")
	}
}

// FuzzNext reads frames from arbitrary bytes with a limit: it must never
// panic, never return more than the limit, and the frames it accepts,
// framed again, must be the input it consumed (skipped frames aside).
func FuzzNext(f *testing.F) {
	for _, s := range []string{"", "\x00\x00", "\x00\x05hello\x00\x01x", "\xff\xff", "\x00\x10short", "\x00\x03abc\x00\x20" + strings.Repeat("z", 32) + "\x00\x01q"} {
		f.Add([]byte(s), uint16(16))
	}
	f.Fuzz(func(t *testing.T, in []byte, limit uint16) {
		max := int(limit)
		if max == 0 || max > MaxLen {
			max = MaxLen
		}
		r := NewReader(bytes.NewReader(in), int(limit))
		buf := make([]byte, max)
		var again []byte
		consumed := 0
		for i := 0; i < len(in)+1; i++ {
			n, err := r.Next(buf)
			if errors.Is(err, ErrTooLarge) {
				size := int(in[consumed])<<8 | int(in[consumed+1])
				if size <= max {
					t.Fatalf("frame of %d bytes reported too large for max %d", size, max)
				}
				again = append(again, in[consumed:consumed+2+size]...)
				consumed += 2 + size
				continue
			}
			if err != nil {
				if err != io.EOF && !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("unexpected error %v", err)
				}
				if err == io.EOF && consumed != len(in) {
					t.Fatalf("io.EOF with %d of %d bytes consumed", consumed, len(in))
				}
				break
			}
			if n > max {
				t.Fatalf("frame of %d bytes over max %d", n, max)
			}
			again, _ = Append(again, buf[:n])
			consumed += 2 + n
		}
		if !bytes.Equal(again, in[:consumed]) {
			t.Fatalf("re-framed %q, consumed %q", again, in[:consumed])
		}
	})
}
