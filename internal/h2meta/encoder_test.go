package h2meta

import (
	"bytes"
	"fmt"
	"testing"

	"golang.org/x/net/http2/hpack"
)

// encOp is one step of an encoder's life: a field written, a block ended
// (the buffers compared and reset), or the peer's table size limit set.
type encOp struct {
	f     hpack.HeaderField
	end   bool
	limit int64 // >= 0: SetMaxDynamicTableSizeLimit(limit)
}

func field(name, value string) encOp {
	return encOp{f: hpack.HeaderField{Name: name, Value: value}, limit: -1}
}

func secret(name, value string) encOp {
	return encOp{f: hpack.HeaderField{Name: name, Value: value, Sensitive: true}, limit: -1}
}

var (
	endBlock = encOp{end: true, limit: -1}
	limitTo  = func(n int64) encOp { return encOp{limit: n} }
)

// runEncoders feeds ops to an Encoder and to a plain hpack.Encoder and
// fails where their bytes differ; every block is also decoded and must
// give back its fields.
func runEncoders(t *testing.T, ops []encOp) {
	t.Helper()
	var got, want bytes.Buffer
	enc, plain := NewEncoder(&got), hpack.NewEncoder(&want)
	dec := hpack.NewDecoder(4096, nil)
	var fields []hpack.HeaderField
	for i, op := range append(ops, endBlock) {
		switch {
		case op.limit >= 0:
			enc.SetMaxDynamicTableSizeLimit(uint32(op.limit))
			plain.SetMaxDynamicTableSizeLimit(uint32(op.limit))
			dec.SetAllowedMaxDynamicTableSize(uint32(op.limit))
		case op.end:
			if !bytes.Equal(got.Bytes(), want.Bytes()) {
				t.Fatalf("block ending at op %d: got %x, want %x (hpack.Encoder's)", i, got.Bytes(), want.Bytes())
			}
			dfs, err := dec.DecodeFull(got.Bytes())
			if err != nil {
				t.Fatalf("block ending at op %d: %v", i, err)
			}
			if fmt.Sprint(dfs) != fmt.Sprint(fields) {
				t.Fatalf("block ending at op %d decodes to %v, want %v", i, dfs, fields)
			}
			got.Reset()
			want.Reset()
			fields = fields[:0]
		default:
			enc.WriteField(op.f)
			plain.WriteField(op.f)
			fields = append(fields, op.f)
		}
	}
}

// TestEncoderMatchesHpack: the remembered encodings are the encoder's own
// while they hold, and are not used once the table may have changed.
func TestEncoderMatchesHpack(t *testing.T) {
	for _, tc := range []struct {
		name string
		ops  []encOp
	}{
		{"repeated", []encOp{field("a", "1"), field("b", "2"), endBlock, field("a", "1"), field("b", "2"), endBlock,
			field("a", "1"), field("b", "2"), field(":method", "GET")}},
		// a indexed at 62 (remembered); c's insertion moves it to 63.
		{"insertion moves indexes", []encOp{field("a", "1"), endBlock, field("a", "1"), endBlock,
			field("c", "3"), endBlock, field("a", "1")}},
		{"insertion within a block", []encOp{field("a", "1"), endBlock, field("a", "1"), field("c", "3"), field("a", "1")}},
		// The size update must lead the next block, and the table is emptied.
		{"table size limit", []encOp{field("a", "1"), endBlock, field("a", "1"), endBlock, limitTo(0), field("a", "1"),
			endBlock, field("a", "1"), endBlock, limitTo(4096), field("a", "1"), endBlock, field("a", "1")}},
		// A sensitive field is never indexed: not a remembered indexed one...
		{"sensitive after indexed", []encOp{field("a", "1"), endBlock, field("a", "1"), endBlock, secret("a", "1")}},
		// ...and a plain one after it is indexed, not written as a secret.
		{"plain after sensitive", []encOp{secret("a", "1"), endBlock, secret("a", "1"), endBlock, field("a", "1"),
			endBlock, field("a", "1")}},
		{"too large to index", []encOp{field("big", string(bytes.Repeat([]byte{'x'}, 5000))), endBlock,
			field("big", string(bytes.Repeat([]byte{'x'}, 5000))), field("a", "1"), endBlock, field("a", "1")}},
		{"more fields than slots", func() []encOp {
			var ops []encOp
			for r := 0; r < 3; r++ {
				for i := 0; i < 2*encSlots; i++ {
					ops = append(ops, field(fmt.Sprint("k", i), "v"))
				}
				ops = append(ops, endBlock)
			}
			return ops
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) { runEncoders(t, tc.ops) })
	}
}

// FuzzEncoderMatchesHpack: any sequence of fields (from a small set, so
// that they repeat), block ends and table size limits.
func FuzzEncoderMatchesHpack(f *testing.F) {
	f.Add([]byte{0, 1, 2, 0xff, 0, 1, 2, 0xfe, 0, 0x80, 1})
	f.Add([]byte{3, 3, 0xff, 3, 0xff, 4, 3, 0xff, 0x83, 3})
	f.Add([]byte{5, 0xff, 5, 0xfd, 5, 0xff, 5, 0xfe, 5})
	names := []string{":authority", ":method", "content-type", "x-a", "date", "user-agent", "x-forwarded-for"}
	values := []string{"GET", "bench.demo", "application/grpc", "", "1", "2", "a-longer-value-than-fits-a-slot-0123456789"}
	f.Fuzz(func(t *testing.T, data []byte) {
		var ops []encOp
		for _, b := range data {
			switch b {
			case 0xff:
				ops = append(ops, endBlock)
			case 0xfe:
				ops = append(ops, endBlock, limitTo(0))
			case 0xfd:
				ops = append(ops, endBlock, limitTo(100))
			case 0xfc:
				ops = append(ops, endBlock, limitTo(4096))
			default:
				op := field(names[int(b&7)%len(names)], values[int(b>>3&7)%len(values)])
				op.f.Sensitive = b&0x40 != 0
				ops = append(ops, op)
			}
		}
		runEncoders(t, ops)
	})
}

// requestFields are a proxied h2c GET's, as the agent sends them upstream.
var requestFields = []hpack.HeaderField{
	{Name: ":authority", Value: "bench.demo"}, {Name: ":method", Value: "GET"}, {Name: ":path", Value: "/"},
	{Name: ":scheme", Value: "http"}, {Name: "user-agent", Value: "h2load nghttp2/1.64.0"},
	{Name: "x-forwarded-for", Value: "127.0.0.1"}, {Name: "x-forwarded-host", Value: "bench.demo"},
	{Name: "x-forwarded-proto", Value: "http"},
}

// BenchmarkEncodeRequest: one request's header block, the same on every
// request of the connection, with hpack.Encoder and with Encoder.
func BenchmarkEncodeRequest(b *testing.B) {
	for _, cached := range []bool{false, true} {
		b.Run(fmt.Sprint("cached=", cached), func(b *testing.B) {
			var buf bytes.Buffer
			plain, enc := hpack.NewEncoder(&buf), NewEncoder(&buf)
			for range b.N {
				buf.Reset()
				for _, f := range requestFields {
					if cached {
						enc.WriteField(f)
					} else {
						plain.WriteField(f)
					}
				}
			}
		})
	}
}

// TestEncoderHoldsLittle: what the remembered encodings keep alive stays
// about the size of the table itself. An indexed field encodes to a byte
// or two however long its value: sixteen long values, each inserted (the
// one before evicted) and written again indexed, were all kept, 16 times
// the 4 KiB the table holds, for the connection's life.
func TestEncoderHoldsLittle(t *testing.T) {
	var b bytes.Buffer
	enc := NewEncoder(&b)
	for i := range 2 * encSlots {
		f := hpack.HeaderField{Name: "cookie", Value: fmt.Sprintf("%02d", i) + string(bytes.Repeat([]byte{'v'}, 3900))}
		enc.WriteField(f) // inserted
		enc.WriteField(f) // indexed
	}
	held := 0
	for _, c := range enc.tab {
		held += len(c.name) + len(c.value)
	}
	if held > 4096 {
		t.Fatalf("the remembered encodings keep %d bytes of fields alive, over the table's 4096", held)
	}
}
