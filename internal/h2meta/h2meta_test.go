package h2meta

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// outcome is what a reader made of one frame, in comparable form.
type outcome string

func describe(f http2.Frame, err error) (outcome, bool) {
	if err != nil {
		var se http2.StreamError
		var ce http2.ConnectionError
		switch {
		case errors.As(err, &se):
			return outcome(fmt.Sprintf("stream error %d %v", se.StreamID, se.Code)), true // reading goes on
		case errors.As(err, &ce):
			return outcome(fmt.Sprintf("connection error %v", http2.ErrCode(ce))), false
		default:
			return outcome("error " + err.Error()), false
		}
	}
	if mh, ok := f.(*http2.MetaHeadersFrame); ok {
		return outcome(fmt.Sprintf("headers %d end=%v prio=%v %+v trunc=%v fields=%q", mh.StreamID, mh.StreamEnded(),
			mh.HasPriority(), mh.Priority, mh.Truncated, fmt.Sprint(mh.Fields))), true
	}
	return outcome(fmt.Sprintf("%v", f.Header())), true
}

// compare reads data with x/net's Framer (ReadMetaHeaders) and with a
// Reader, frame by frame, and fails at the first difference.
func compare(t *testing.T, data []byte, maxList uint32) {
	t.Helper()
	xfr := http2.NewFramer(nil, bytes.NewReader(data))
	xfr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	xfr.MaxHeaderListSize = maxList
	ofr := http2.NewFramer(nil, bytes.NewReader(data))
	r := New(ofr, maxList)
	for i := 0; i < 1000; i++ {
		want, wgo := describe(xfr.ReadFrame())
		got, ggo := describe(r.ReadFrame())
		if got != want {
			t.Fatalf("frame %d: got %s\nwant %s", i, got, want)
		}
		if !wgo || !ggo {
			return
		}
	}
}

// block encodes fields (name, value pairs; a name starting with "~" is
// sent Huffman-free and never indexed).
func block(fields ...string) []byte {
	var b bytes.Buffer
	enc := hpack.NewEncoder(&b)
	for i := 0; i+1 < len(fields); i += 2 {
		name, sens := fields[i], false
		if strings.HasPrefix(name, "~") {
			name, sens = name[1:], true
		}
		enc.WriteField(hpack.HeaderField{Name: name, Value: fields[i+1], Sensitive: sens})
	}
	return b.Bytes()
}

// frames writes HEADERS frames (and CONTINUATIONs splitting a block in
// parts of at most split bytes) for each block, on streams 1, 3, ...
func frames(split int, end bool, blocks ...[]byte) []byte {
	var b bytes.Buffer
	fr := http2.NewFramer(&b, nil)
	for i, blk := range blocks {
		id := uint32(2*i + 1)
		first := true
		for first || len(blk) > 0 {
			n := min(split, len(blk))
			frag := blk[:n]
			blk = blk[n:]
			if first {
				fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: frag, EndStream: end, EndHeaders: len(blk) == 0})
				first = false
			} else {
				fr.WriteContinuation(id, len(blk) == 0, frag)
			}
		}
		fr.WriteData(id, true, []byte("x"))
	}
	return b.Bytes()
}

var request = []string{":method", "POST", ":scheme", "http", ":path", "/a", ":authority", "x.demo", "content-type", "application/grpc", "te", "trailers"}

func seeds() [][]byte {
	long := strings.Repeat("v", 300)
	return [][]byte{
		frames(1<<14, false, block(request...), block(request...), block("grpc-status", "0")),
		frames(3, true, block(request...), block(":status", "200", "~x-secret", "s")),
		frames(1<<14, true, block(":method", "GET", "Bad-Name", "v")),
		frames(1<<14, true, block(":method", "GET", "x", "bad\x00value")),
		frames(1<<14, true, block("x", "y", ":path", "/")),
		frames(1<<14, true, block(":path", "/", ":path", "/b")),
		frames(1<<14, true, block(":status", "200", ":method", "GET")),
		frames(1<<14, true, block(":bogus", "1")),
		frames(1<<14, true, block(":method", "GET", "a", long, "b", long, "c", long)),
		frames(1<<14, true, block("trailer", "a, b, c,d", "x", long)),
		frames(1<<14, true, []byte{0xff, 0xff, 0xff, 0xff}),
		frames(10, true, block(request...), block("a", long, "b", long, "c", long, "d", long)),
		append(frames(5, true, block(request...))[:20], frames(1<<14, true, block("a", "b"))...), // a block cut short
	}
}

// TestMatchesXNet: the seeds read alike, with the default limit and a
// small one (truncation, the budget check).
func TestMatchesXNet(t *testing.T) {
	for i, s := range seeds() {
		for _, max := range []uint32{0, 200, 1000} {
			t.Run(fmt.Sprint(i, "/", max), func(t *testing.T) { compare(t, s, max) })
		}
	}
}

// FuzzMatchesXNet: any bytes read as frames give the same frames, fields
// and errors as x/net's Framer with ReadMetaHeaders.
func FuzzMatchesXNet(f *testing.F) {
	for _, s := range seeds() {
		f.Add(s, uint16(0))
		f.Add(s, uint16(300))
	}
	f.Fuzz(func(t *testing.T, data []byte, max uint16) {
		compare(t, data, uint32(max))
	})
}

// TestReusesStorage: blocks after the first allocate no frame, closure or
// field slice of their own.
func TestReusesStorage(t *testing.T) {
	data := frames(1<<14, false, block(request...))
	var rd bytes.Reader
	fr := http2.NewFramer(nil, &rd)
	r := New(fr, 0)
	read := func() {
		rd.Reset(data)
		if f, err := r.ReadFrame(); err != nil || len(f.(*http2.MetaHeadersFrame).Fields) != 6 {
			t.Fatalf("%v %v", f, err)
		}
		if _, err := r.ReadFrame(); err != nil {
			t.Fatal(err)
		}
	}
	read()
	// The HEADERS and DATA frames themselves, and the block's literal
	// strings, are the Framer's and the decoder's.
	allocs := testing.AllocsPerRun(100, read)
	xfr := http2.NewFramer(nil, &rd)
	xfr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	xallocs := testing.AllocsPerRun(100, func() {
		rd.Reset(data)
		xfr.ReadFrame()
		xfr.ReadFrame()
	})
	t.Logf("%.0f allocations per block, x/net %.0f", allocs, xallocs)
	if allocs+5 > xallocs {
		t.Fatalf("%.0f allocations per block, x/net's Framer %.0f: want at least 5 fewer", allocs, xallocs)
	}
}
