package syncproto

// Chunked updates: the control plane splits an update too large for one
// chunk (wire.ChunkBytes, wire.ChunkItems) into consecutive frames that
// share its nonce; the agent holds them and applies the update once, when
// the last chunk arrived, so a snapshot still replaces the configuration
// only when complete and the agent acks or nacks each update once.

import (
	"encoding/json"
	"fmt"

	"github.com/fogmesh/fogmesh/internal/wire"
)

// Limits bound chunked updates: the sender's chunk budget and what a
// receiver holds for one update. Tests shrink them to script chunking with
// small updates.
type Limits struct {
	ChunkBytes     int `json:"chunkBytes"`     // encoded Resources and Removed per chunk
	ChunkItems     int `json:"chunkItems"`     // Resources plus Removed per chunk
	MaxChunks      int `json:"maxChunks"`      // chunks of one update a receiver takes
	MaxUpdateBytes int `json:"maxUpdateBytes"` // resource bodies and names of one update
}

// DefaultLimits are the protocol's bounds (internal/wire).
var DefaultLimits = Limits{ChunkBytes: wire.ChunkBytes, ChunkItems: wire.ChunkItems,
	MaxChunks: wire.MaxChunks, MaxUpdateBytes: wire.MaxUpdateBytes}

// SplitUpdate returns the frames that carry update m within l: m itself
// when it fits one chunk (so such an update is the same frame as before
// chunking existed), else chunks 1..n, each a copy of m's other fields
// with a share of Resources, then Removed, in order. An item larger than
// ChunkBytes goes alone in its chunk. More than MaxChunks chunks is an
// error: no receiver would take them.
func SplitUpdate(m *wire.Message, l Limits) ([]*wire.Message, error) {
	return SplitUpdateSized(m, l, nil)
}

// SplitUpdateSized is SplitUpdate with the encoded size of each item
// (Resources then Removed) given, as a sender that encoded them once
// knows them; nil sizes, or a count that does not match, are measured.
func SplitUpdateSized(m *wire.Message, l Limits, sizes []int) ([]*wire.Message, error) {
	total := len(m.Resources) + len(m.Removed)
	if len(sizes) != total {
		sizes = nil
	}
	if total == 0 || (total <= l.ChunkItems && maxEncoded(m) <= l.ChunkBytes) {
		return []*wire.Message{m}, nil // most deltas: no need to encode twice
	}
	// bounds[i] is the item index where chunk i+1 starts.
	var bounds []int
	start, bytes := 0, 0
	for i := range total {
		var size int
		if sizes != nil {
			size = sizes[i] + 1
		} else {
			var it any
			if i < len(m.Resources) {
				it = m.Resources[i]
			} else {
				it = m.Removed[i-len(m.Resources)]
			}
			b, err := json.Marshal(it)
			if err != nil {
				return nil, fmt.Errorf("sync: encode update %d: %w", m.Version, err)
			}
			size = len(b) + 1 // and its comma
		}
		if i > start && (bytes+size > l.ChunkBytes || i-start >= l.ChunkItems) {
			bounds = append(bounds, start)
			start, bytes = i, 0
		}
		bytes += size
	}
	bounds = append(bounds, start)
	if len(bounds) == 1 {
		return []*wire.Message{m}, nil
	}
	if len(bounds) > l.MaxChunks {
		return nil, fmt.Errorf("sync: update %d needs %d chunks, more than the %d a receiver takes", m.Version, len(bounds), l.MaxChunks)
	}
	out := make([]*wire.Message, len(bounds))
	for i, from := range bounds {
		to := total
		if i+1 < len(bounds) {
			to = bounds[i+1]
		}
		c := *m
		c.Chunk, c.Chunks, c.Resources, c.Removed = i+1, len(bounds), nil, nil
		nr := len(m.Resources)
		if from < nr {
			c.Resources = m.Resources[from:min(to, nr)]
		}
		if to > nr {
			c.Removed = m.Removed[max(from, nr)-nr : to-nr]
		}
		out[i] = &c
	}
	return out, nil
}

// maxEncoded bounds the JSON size of m's items without encoding them:
// a string or body byte encodes to at most 6 bytes (\u00XX), and the
// rest of an item (keys, version, punctuation, a null body) to under 72.
func maxEncoded(m *wire.Message) int {
	n := 0
	for _, r := range m.Resources {
		n += 6*(len(r.Body)+len(r.Name)+len(r.Type)) + 72
	}
	for _, r := range m.Removed {
		n += 6*(len(r.Name)+len(r.Type)) + 72
	}
	return n
}

// UpdateBytes is what an update's chunk adds to the receiver's memory:
// resource bodies and names (MaxUpdateBytes bounds their sum). Region
// links count chunks with it too.
func UpdateBytes(m *wire.Message) int {
	n := 0
	for _, r := range m.Resources {
		n += len(r.Body) + len(r.Name) + len(r.Type)
	}
	for _, r := range m.Removed {
		n += len(r.Name) + len(r.Type)
	}
	return n
}

// chunk takes one chunk of an update (m.Chunk or m.Chunks set) in state
// Streaming or Receiving.
func (a *Agent) chunk(m *wire.Message) Output {
	whole, err := a.asm.Take(m)
	switch {
	case err != nil:
		return a.badUpdate(m, err)
	case whole == nil:
		a.state = agentReceiving
		return Output{}
	}
	a.state, a.applying = agentApplying, whole
	return Output{Effects: []Effect{a.apply(whole)}}
}

// badUpdate refuses a malformed update as a refused Apply is: NACK it,
// end the stream and resubscribe for a full snapshot, since the chunks
// taken so far are dropped and deltas built on the update would miss it.
func (a *Agent) badUpdate(m *wire.Message, err error) Output {
	a.resyncFull = true
	a.asm.Reset()
	return Output{
		Send: []*wire.Message{{Type: wire.TypeNack, Nonce: m.Nonce, Version: m.Version, Error: err.Error()}},
		Err:  fmt.Errorf("rejected update %d: %w", m.Version, err),
	}
}
