package h2meta

import (
	"bytes"
	"fmt"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// indexedBlocks encodes each set of fields (name, value pairs) with one
// encoder, as a peer does on one connection: fields it has sent before
// are indexed.
func indexedBlocks(sets ...[]string) [][]byte {
	var b bytes.Buffer
	enc := hpack.NewEncoder(&b)
	var out [][]byte
	for _, fields := range sets {
		b.Reset()
		for i := 0; i+1 < len(fields); i += 2 {
			enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
		}
		out = append(out, bytes.Clone(b.Bytes()))
	}
	return out
}

// Raw blocks (RFC 7541 §6): a literal "a: 1" inserted (62), another "b: 2"
// inserted (62, moving "a: 1" to 63), the dynamic entry 62 (indexed), a
// size update to 0 and :method GET.
var (
	insertA   = []byte{0x40, 0x01, 'a', 0x01, '1'}
	insertB   = []byte{0x40, 0x01, 'b', 0x01, '2'}
	index62   = []byte{0xbe}
	emptyInto = []byte{0x20, 0x82}
)

// knownSeeds are frames whose blocks repeat once indexed, and blocks that
// change the table between repeats.
func knownSeeds() [][]byte {
	resp := []string{":status", "200", "content-type", "application/grpc"}
	trail := []string{"grpc-status", "0", "grpc-message", ""}
	return [][]byte{
		frames(1<<14, true, indexedBlocks(request, request, request, request)...),
		frames(1<<14, true, indexedBlocks(resp, trail, resp, trail, resp, trail, resp)...),
		frames(1<<14, true, insertA, index62, index62, insertB, index62),
		frames(1<<14, true, insertA, index62, index62, emptyInto, index62),
		frames(1<<14, true, insertA, index62, []byte{0x3f, 0xe1, 0x1f, 0x82}, index62), // a size update to 4096
		// A block that inserts in its HEADERS and indexes in its CONTINUATION.
		frames(5, true, insertA, index62, append(bytes.Clone(insertB), 0xbe), index62),
		// A known block as the first fragment of a longer one.
		frames(1, true, insertA, index62, index62, []byte{0xbe, 0x82}),
		// A known block in a stream error's block (a bad field after it).
		frames(1<<14, true, insertA, index62, append([]byte{0xbe}, block("Bad", "v")...), index62),
	}
}

// TestKnownBlocksMatchXNet: repeated blocks are read as x/net reads them,
// also after blocks that change the table (forgetKnown) and with a known
// block as the first fragment of another (its CONTINUATIONs are read).
func TestKnownBlocksMatchXNet(t *testing.T) {
	for i, s := range knownSeeds() {
		for _, max := range []uint32{0, 30} {
			t.Run(fmt.Sprint(i, "/", max), func(t *testing.T) { compare(t, s, max) })
		}
	}
}

// FuzzKnownBlocksMatchXNet: blocks assembled from pieces that insert,
// index, update the table's size and break the rules, read alike.
func FuzzKnownBlocksMatchXNet(f *testing.F) {
	f.Add([]byte{0, 1, 1, 2, 1}, uint8(0))
	f.Add([]byte{0, 1, 3, 1, 0x11, 1}, uint8(1))
	f.Add([]byte{4, 5, 4, 5, 4}, uint8(0))
	pieces := [][]byte{insertA, index62, insertB, emptyInto, {0x82, 0x84, 0x86}, {0xbe, 0xbf}, {0xff, 0x80, 0x01}, block("X", "1")}
	f.Fuzz(func(t *testing.T, picks []byte, split uint8) {
		var blocks [][]byte
		for _, p := range picks {
			blk := bytes.Clone(pieces[int(p&7)])
			if p&0x10 != 0 && len(blocks) > 0 { // joined to the block before
				blocks[len(blocks)-1] = append(blocks[len(blocks)-1], blk...)
				continue
			}
			blocks = append(blocks, blk)
		}
		compare(t, frames(1+int(split)%40, true, blocks...), 0)
	})
}

func TestAllIndexed(t *testing.T) {
	for _, tc := range []struct {
		b    []byte
		want bool
	}{
		{nil, true},
		{[]byte{0x82, 0xbe}, true},
		{[]byte{0xff, 0x80, 0x01, 0x82}, true}, // index 127+128
		{[]byte{0xff, 0x80}, false},            // cut short
		{[]byte{0xff}, false},
		{insertA, false},
		{[]byte{0x82, 0x20}, false},                       // a size update
		{[]byte{0x82, 0x00, 0x01, 'a', 0x01, '1'}, false}, // a literal not indexed
		{[]byte{0x10, 0x01, 'a', 0x01, '1'}, false},       // never indexed
	} {
		if got := allIndexed(tc.b); got != tc.want {
			t.Errorf("allIndexed(%x) = %v, want %v", tc.b, got, tc.want)
		}
	}
}

// TestKnownBlockKept: a block of indexed fields is kept, and read again
// from what was kept, to the same fields.
func TestKnownBlockKept(t *testing.T) {
	blocks := indexedBlocks(request, request)
	want := fmt.Sprint(mustDecode(t, blocks[0]))
	var rd bytes.Reader
	r := New(http2.NewFramer(nil, &rd), 0)
	for i, blk := range []([]byte){blocks[0], blocks[1], blocks[1]} {
		rd.Reset(frames(1<<14, true, blk))
		f, err := r.ReadFrame()
		if err != nil || fmt.Sprint(f.(*http2.MetaHeadersFrame).Fields) != want {
			t.Fatalf("block %d: %v %v", i, f, err)
		}
		if i > 0 && !bytes.Equal(r.known[0].block, blocks[1]) {
			t.Fatalf("block %d: known block %x, want %x", i, r.known[0].block, blocks[1])
		}
	}
}

func mustDecode(t *testing.T, b []byte) []hpack.HeaderField {
	t.Helper()
	fs, err := hpack.NewDecoder(4096, nil).DecodeFull(b)
	if err != nil {
		t.Fatal(err)
	}
	return fs
}
