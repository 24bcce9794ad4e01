package h2meta

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"golang.org/x/net/http2/hpack"
)

// seqFields are fields a fuzzed sequence draws from: short ones a slot
// remembers, long ones that fill a small table (evicting others), and
// ones with the same name and other values.
var seqFields = []hpack.HeaderField{
	{Name: ":authority", Value: "a.demo"}, {Name: ":authority", Value: "b.demo"},
	{Name: "authorization", Value: "Bearer alice"}, {Name: "authorization", Value: "Bearer bob"},
	{Name: "cookie", Value: "s=" + strings.Repeat("c", 60)}, {Name: ":method", Value: "GET"},
	{Name: "x-long", Value: strings.Repeat("L", 150)}, {Name: "x-a", Value: "1"},
}

// seqBlocks turns data into the header blocks of one encoder's life: each
// byte writes a field (sensitive with 0x08 set), ends the block (0xf0-0xf7)
// or ends it and limits the peer's table (0xf8-0xff: 0, 40, 80, ...,
// 4096).
func seqBlocks(data []byte, write func(hpack.HeaderField), end func(), limit func(uint32)) {
	for _, b := range data {
		switch {
		case b >= 0xf8:
			end()
			n := uint32(b-0xf8) * 40
			if b == 0xff {
				n = 4096
			}
			limit(n)
		case b >= 0xf0:
			end()
		default:
			f := seqFields[int(b&7)]
			f.Sensitive = b&8 != 0
			write(f)
		}
	}
	end()
}

// FuzzEncoderSequences: Encoder against hpack.Encoder over sequences of
// blocks with repeated fields, sensitive ones, evictions from small tables
// and table size limits between blocks; every block also decodes, on a
// decoder that holds the peer's limit, to its fields.
func FuzzEncoderSequences(f *testing.F) {
	f.Add([]byte{0, 2, 4, 0xf0, 0, 2, 4, 0xf0, 0, 2, 4, 0xfb, 0, 2, 4, 0xf0, 1, 3, 6, 0xf0, 0, 2, 4})
	f.Add([]byte{6, 0xf0, 6, 2, 0xfa, 6, 2, 0xf0, 6, 2, 10, 2, 0xf0, 2, 0xf8, 2, 0xf0, 2})
	f.Add([]byte{0, 1, 0, 1, 0xf0, 0, 1, 4, 6, 0, 1, 0xf0, 0, 1, 0xf0, 0, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		var got, want bytes.Buffer
		enc, plain := NewEncoder(&got), hpack.NewEncoder(&want)
		dec := hpack.NewDecoder(4096, nil)
		var fields []hpack.HeaderField
		blocks := 0
		seqBlocks(data, func(f hpack.HeaderField) {
			enc.WriteField(f)
			plain.WriteField(f)
			fields = append(fields, f)
		}, func() {
			blocks++
			if !bytes.Equal(got.Bytes(), want.Bytes()) {
				t.Fatalf("block %d: got %x, want %x (hpack.Encoder's)", blocks, got.Bytes(), want.Bytes())
			}
			dfs, err := dec.DecodeFull(got.Bytes())
			if err != nil {
				t.Fatalf("block %d: %v", blocks, err)
			}
			if fmt.Sprint(dfs) != fmt.Sprint(fields) {
				t.Fatalf("block %d decodes to %v, want %v", blocks, dfs, fields)
			}
			got.Reset()
			want.Reset()
			fields = fields[:0]
		}, func(n uint32) {
			enc.SetMaxDynamicTableSizeLimit(n)
			plain.SetMaxDynamicTableSizeLimit(n)
			dec.SetAllowedMaxDynamicTableSize(n)
		})
	})
}

// FuzzReaderSequences: a peer's blocks, as hpack.Encoder makes them over
// a connection's life (fields indexed and repeated as indexed references,
// evictions from a small table, size updates leading a block after the
// table's limit changed), each split over CONTINUATIONs or not, read as
// x/net's Framer reads them. The decoder's table is the encoder's: a block
// of indexed references read from a known block against a table that has
// changed since decodes to other fields than x/net's.
func FuzzReaderSequences(f *testing.F) {
	f.Add([]byte{0, 2, 0xf0, 0, 2, 0xf0, 0, 2, 0xf0, 6, 0xf0, 0, 2, 0xf0, 0, 2}, uint8(0))
	// b-e ("bf be" for a.demo, alice) once known, then the same bytes for
	// b.demo, bob once those two are inserted in front.
	f.Add([]byte{0, 2, 0xf0, 0, 2, 0xf0, 1, 3, 0xf0, 1, 3}, uint8(1))
	f.Add([]byte{0, 2, 0xf0, 0, 2, 0xf0, 1, 3, 0xf0, 1, 3}, uint8(0))
	f.Add([]byte{0, 2, 0xf0, 0, 2, 0xf0, 0, 2, 0xfb, 0, 2, 0xf0, 0, 2, 0xf0, 1, 3}, uint8(3))
	f.Add([]byte{6, 4, 0xf0, 6, 4, 0xf0, 0, 0xf0, 6, 4, 0xf8, 6, 4, 0xf0, 6, 4}, uint8(7))
	f.Fuzz(func(t *testing.T, data []byte, split uint8) {
		var b bytes.Buffer
		enc := hpack.NewEncoder(&b)
		var blocks [][]byte
		seqBlocks(data, func(f hpack.HeaderField) { enc.WriteField(f) }, func() {
			blocks = append(blocks, bytes.Clone(b.Bytes()))
			b.Reset()
		}, func(n uint32) {
			// The peer's own choice of a size within the decoder's 4096,
			// up as well as down: a size update leads the next block.
			enc.SetMaxDynamicTableSizeLimit(4096)
			enc.SetMaxDynamicTableSize(n)
		})
		n := 1 << 14
		if split%4 == 0 {
			n = 1 + int(split)
		}
		compare(t, frames(n, true, blocks...), 0)
	})
}
