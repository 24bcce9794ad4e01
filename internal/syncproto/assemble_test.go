package syncproto

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/fogmesh/fogmesh/internal/wire"
)

var asmLimits = Limits{ChunkBytes: 64, ChunkItems: 2, MaxChunks: 8, MaxUpdateBytes: 256}

func rm(name string) []wire.ResourceRef { return []wire.ResourceRef{{Type: "Node", Name: name}} }

// TestAssembler: chunks in order make the update whole (without chunk
// fields, holding every item); every bad sequence is refused naming why,
// matching ErrChunk, and drops what was held.
func TestAssembler(t *testing.T) {
	up := func(nonce string, version uint64, chunk, chunks int, name string) *wire.Message {
		return &wire.Message{Type: wire.TypeUpdate, Nonce: nonce, Version: version, Chunk: chunk, Chunks: chunks, Removed: rm(name)}
	}
	big := &wire.Message{Type: wire.TypeUpdate, Version: 3, Chunk: 1, Chunks: 2, Removed: rm(strings.Repeat("x", 300))}
	for _, c := range []struct {
		name string
		seq  []*wire.Message
		want string // error of the last frame; "" for the whole update
	}{
		{"whole", []*wire.Message{up("", 3, 0, 0, "a")}, ""},
		{"chunked", []*wire.Message{up("1", 3, 1, 3, "a"), up("1", 3, 2, 3, "b"), up("1", 3, 3, 3, "c")}, ""},
		{"gap", []*wire.Message{up("1", 3, 1, 3, "a"), up("1", 3, 3, 3, "c")}, "chunk 3 of 3 where chunk 2 was due"},
		{"no first", []*wire.Message{up("1", 3, 2, 2, "b")}, "chunk 2 of 2 without the chunks before it"},
		{"other version", []*wire.Message{up("", 3, 1, 2, "a"), up("", 4, 2, 2, "b")}, "chunk 2 of 2 of update 4 while update 3 is incomplete"},
		{"other nonce", []*wire.Message{up("1", 3, 1, 2, "a"), up("2", 3, 2, 2, "b")}, `chunk 2 of 2 of update 3 (nonce "2") while update 3 (nonce "1") is incomplete`},
		{"whole between chunks", []*wire.Message{up("", 3, 1, 2, "a"), up("", 4, 0, 0, "b")}, "update 4 sent whole while chunk 2 of 2 of update 3 is due"},
		{"too many chunks", []*wire.Message{up("", 3, 1, 9, "a")}, "malformed chunk 1 of 9 (at most 8 chunks)"},
		{"one chunk", []*wire.Message{up("", 3, 1, 1, "a")}, "malformed chunk 1 of 1 (at most 8 chunks)"},
		{"too large", []*wire.Message{big}, "update larger than 256 bytes"},
	} {
		t.Run(c.name, func(t *testing.T) {
			a := &Assembler{Limits: asmLimits}
			var whole *wire.Message
			var err error
			for i, m := range c.seq {
				if whole, err = a.Take(m); i < len(c.seq)-1 && (err != nil || whole != nil) {
					t.Fatalf("frame %d: %v, %v; want it held", i, whole, err)
				}
			}
			if held, _, _ := a.Held(); held != nil {
				t.Fatalf("still holds update %d after the last frame", held.Version)
			}
			if c.want != "" {
				if err == nil || err.Error() != c.want || !errors.Is(err, ErrChunk) {
					t.Fatalf("error %v, want %q matching ErrChunk", err, c.want)
				}
				return
			}
			if err != nil || whole == nil || whole.Chunk != 0 || whole.Chunks != 0 || len(whole.Removed) != len(c.seq) {
				t.Fatalf("whole %+v, %v", whole, err)
			}
		})
	}
}

// FuzzAssembler: no sequence of update frames crashes the assembler; what
// it returns whole is an update without chunk fields, within the bounds,
// holding every item of the chunks it was made of. (It was FuzzRegionChunks
// of internal/control, whose region links now use Assembler.)
func FuzzAssembler(f *testing.F) {
	f.Add([]byte(`[{"type":"update","version":3,"chunk":1,"chunks":2,"removed":[{"type":"Node","name":"a"}]},{"type":"update","version":3,"chunk":2,"chunks":2,"removed":[{"type":"Node","name":"b"}]}]`))
	f.Add([]byte(`[{"type":"update","version":3,"chunk":2,"chunks":2}]`))
	f.Add([]byte(`[{"type":"update","version":3,"chunk":1,"chunks":2},{"type":"update","version":4}]`))
	f.Add([]byte(`[{"type":"update","version":3,"chunk":1,"chunks":9999}]`))
	f.Add([]byte(`[{"type":"update","nonce":"1","version":3,"chunk":1,"chunks":2},{"type":"update","nonce":"2","version":3,"chunk":2,"chunks":2}]`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var ms []*wire.Message
		if json.Unmarshal(body, &ms) != nil {
			return
		}
		a := &Assembler{Limits: asmLimits}
		items := 0
		for _, m := range ms {
			if m == nil {
				continue
			}
			items += len(m.Resources) + len(m.Removed)
			whole, err := a.Take(m)
			if err != nil {
				if !errors.Is(err, ErrChunk) {
					t.Fatalf("error %v does not match ErrChunk", err)
				}
				items = 0
				continue
			}
			if whole == nil {
				continue
			}
			if whole.Chunk != 0 || whole.Chunks != 0 || len(whole.Resources)+len(whole.Removed) != items {
				t.Fatalf("assembled %+v from %d items", whole, items)
			}
			if whole != m && UpdateBytes(whole) > asmLimits.MaxUpdateBytes {
				t.Fatalf("assembled %d bytes, over the bound", UpdateBytes(whole))
			}
			items = 0
		}
	})
}
