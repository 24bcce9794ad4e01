package syncproto

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	"github.com/fogmesh/fogmesh/internal/wire"
)

// TestSplitUpdateBounds splits updates of random item sizes and checks
// that every chunk stays within the budget (or holds one item alone), that
// the chunks carry the update's fields and its items in order, and that an
// update within the budget is the very frame it was.
func TestSplitUpdateBounds(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	l := Limits{ChunkBytes: 600, ChunkItems: 7, MaxChunks: 1000, MaxUpdateBytes: 1 << 20}
	for round := range 200 {
		m := &wire.Message{Type: wire.TypeUpdate, Version: uint64(round + 1), Nonce: "5", StoreID: "s", Full: round%2 == 0}
		for i := range rng.IntN(1 + rng.IntN(40)) {
			body := fmt.Sprintf(`{"pad":%q}`, strings.Repeat("<", rng.IntN(1+rng.IntN(900))))
			m.Resources = append(m.Resources, wire.Resource{ResourceRef: wire.ResourceRef{Type: "Endpoint", Name: fmt.Sprintf("ns/e%d", i)}, Version: 1, Body: json.RawMessage(body)})
		}
		for i := range rng.IntN(20) {
			m.Removed = append(m.Removed, wire.ResourceRef{Type: "Endpoint", Name: fmt.Sprintf("ns/gone%d", i)})
		}
		chunks, err := SplitUpdate(m, l)
		if err != nil {
			t.Fatal(err)
		}
		if len(chunks) == 1 && chunks[0] != m {
			t.Fatalf("round %d: an update in one chunk was copied or changed", round)
		}
		whole := &wire.Message{}
		for i, c := range chunks {
			if len(chunks) > 1 && (c.Chunk != i+1 || c.Chunks != len(chunks) || c.Nonce != m.Nonce || c.Version != m.Version || c.Full != m.Full || c.StoreID != m.StoreID) {
				t.Fatalf("round %d chunk %d: header %+v", round, i+1, c)
			}
			items, bytes := len(c.Resources)+len(c.Removed), 0
			for _, r := range c.Resources {
				b, _ := json.Marshal(r)
				bytes += len(b) + 1
			}
			for _, r := range c.Removed {
				b, _ := json.Marshal(r)
				bytes += len(b) + 1
			}
			if (items == 0 && len(chunks) > 1) || items > l.ChunkItems || (bytes > l.ChunkBytes && items > 1) {
				t.Fatalf("round %d chunk %d: %d items, %d bytes, budget %d/%d", round, i+1, items, bytes, l.ChunkItems, l.ChunkBytes)
			}
			whole.Resources = append(whole.Resources, c.Resources...)
			whole.Removed = append(whole.Removed, c.Removed...)
		}
		if !reflect.DeepEqual(whole.Resources, m.Resources) || !reflect.DeepEqual(whole.Removed, m.Removed) {
			t.Fatalf("round %d: chunks do not reassemble the update", round)
		}
	}
}

// TestChunkedRoundTrip feeds a control machine's chunks of a large
// update to an agent machine, which applies exactly that update once.
func TestChunkedRoundTrip(t *testing.T) {
	l := Limits{ChunkBytes: 1000, ChunkItems: 10, MaxChunks: 100, MaxUpdateBytes: 1 << 20}
	m := &wire.Message{Type: wire.TypeUpdate, Version: 42, StoreID: "s1", Full: true}
	for i := range 95 {
		m.Resources = append(m.Resources, wire.Resource{ResourceRef: wire.ResourceRef{Type: "Endpoint", Name: fmt.Sprintf("ns/e%d", i)}, Version: 1, Body: json.RawMessage(`{}`)})
	}
	chunks, err := SplitUpdate(m, l)
	if err != nil || len(chunks) != 10 {
		t.Fatalf("%d chunks, %v; want 10", len(chunks), err)
	}
	a := NewAgent()
	a.SetLimits(l)
	a.Connect(nil, nil, Known{})
	if out := a.Step(Recv{&wire.Message{Type: wire.TypeWelcome}}); out.Err != nil {
		t.Fatal(out.Err)
	}
	var applied []*wire.Message
	for _, c := range chunks {
		out := a.Step(Recv{c})
		if out.Err != nil || len(out.Send) != 0 {
			t.Fatalf("chunk %d: %+v", c.Chunk, out)
		}
		for _, e := range out.Effects {
			applied = append(applied, e.(Apply).Msg)
		}
	}
	if len(applied) != 1 || len(applied[0].Resources) != 95 || applied[0].Chunks != 0 || !applied[0].Full || applied[0].Version != 42 {
		t.Fatalf("applied %d updates: %+v", len(applied), applied)
	}
}

// TestSplitUpdateSizedMatchesMeasured: with the items' encoded sizes given
// (as the control plane's feed knows them), the chunks are the ones
// measured by encoding; wrong-length sizes are ignored.
func TestSplitUpdateSizedMatchesMeasured(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	l := Limits{ChunkBytes: 500, ChunkItems: 5, MaxChunks: 1000, MaxUpdateBytes: 1 << 20}
	for round := range 100 {
		m := &wire.Message{Type: wire.TypeUpdate, Version: uint64(round + 1), StoreID: "s"}
		var sizes []int
		for i := range rng.IntN(30) {
			r := wire.Resource{ResourceRef: wire.ResourceRef{Type: "Endpoint", Name: fmt.Sprintf("ns/e%d", i)}, Version: 1,
				Body: json.RawMessage(fmt.Sprintf(`{"pad":%q}`, strings.Repeat("x", rng.IntN(400))))}
			m.Resources = append(m.Resources, r)
			b, _ := json.Marshal(r)
			sizes = append(sizes, len(b))
		}
		for i := range rng.IntN(10) {
			r := wire.ResourceRef{Type: "Node", Name: fmt.Sprintf("n%d", i)}
			m.Removed = append(m.Removed, r)
			b, _ := json.Marshal(r)
			sizes = append(sizes, len(b))
		}
		want, err := SplitUpdate(m, l)
		if err != nil {
			t.Fatal(err)
		}
		for _, sz := range [][]int{sizes, sizes[:len(sizes)/2]} {
			got, err := SplitUpdateSized(m, l, sz)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("round %d: chunks with sizes differ from measured ones", round)
			}
		}
	}
}
