package syncproto

import (
	"errors"
	"fmt"

	"github.com/fogmesh/fogmesh/internal/wire"
)

// ErrChunk marks a malformed chunk sequence (Assembler.Take's errors).
var ErrChunk = errors.New("bad chunk")

// chunkError is an Assembler error: its text alone (it goes into a NACK
// as it is), matching ErrChunk.
type chunkError string

func (e chunkError) Error() string        { return string(e) }
func (e chunkError) Is(target error) bool { return target == ErrChunk }

// Assembler holds the chunks of one update (SplitUpdate's frames, written
// back to back) until the last one and returns the update whole, so a
// snapshot replaces nothing until complete. The agent's machine and both
// ends of a region link use it; the zero value with Limits set is ready.
// Not safe for concurrent use: the reader of one stream alone uses it.
type Assembler struct {
	Limits Limits // MaxChunks and MaxUpdateBytes bound what is held

	held   *wire.Message // the chunks taken so far; nil between updates
	chunks int           // held's chunk count
	next   int           // the chunk due next
	bytes  int           // resource bodies and names held (UpdateBytes)
}

// Held returns the update whose chunks are held (nil between updates),
// the chunk due next and the update's chunk count.
func (a *Assembler) Held() (m *wire.Message, next, chunks int) {
	return a.held, a.next, a.chunks
}

// Reset drops what is held.
func (a *Assembler) Reset() { a.held = nil }

// Take returns the whole update once m completes it: m itself if it is not
// chunked (neither Chunk nor Chunks set), nil while chunks are missing. A
// chunk out of order, of another update (nonce, version, store, full or
// chunk count differ), beyond the limits, or an unchunked update while one
// is incomplete is an error matching ErrChunk; what was held is dropped.
func (a *Assembler) Take(m *wire.Message) (*wire.Message, error) {
	fail := func(format string, args ...any) (*wire.Message, error) {
		a.held = nil
		return nil, chunkError(fmt.Sprintf(format, args...))
	}
	if m.Chunk == 0 && m.Chunks == 0 {
		if a.held != nil {
			return fail("update %d sent whole while chunk %d of %d of update %d is due", m.Version, a.next, a.chunks, a.held.Version)
		}
		return m, nil
	}
	if m.Chunks < 2 || m.Chunks > a.Limits.MaxChunks || m.Chunk < 1 || m.Chunk > m.Chunks {
		return fail("malformed chunk %d of %d (at most %d chunks)", m.Chunk, m.Chunks, a.Limits.MaxChunks)
	}
	if a.held == nil {
		if m.Chunk != 1 {
			return fail("chunk %d of %d without the chunks before it", m.Chunk, m.Chunks)
		}
		c := *m
		c.Chunk, c.Chunks = 0, 0
		c.Resources, c.Removed = append([]wire.Resource(nil), m.Resources...), append([]wire.ResourceRef(nil), m.Removed...)
		a.held, a.chunks, a.next, a.bytes = &c, m.Chunks, 2, UpdateBytes(m)
		if a.bytes > a.Limits.MaxUpdateBytes {
			return fail("update larger than %d bytes", a.Limits.MaxUpdateBytes)
		}
		return nil, nil
	}
	h := a.held
	if m.Nonce != h.Nonce || m.Version != h.Version || m.StoreID != h.StoreID || m.Full != h.Full || m.Chunks != a.chunks {
		return fail("chunk %d of %d of %s while %s is incomplete", m.Chunk, m.Chunks, updateName(m), updateName(h))
	}
	if m.Chunk != a.next {
		return fail("chunk %d of %d where chunk %d was due", m.Chunk, m.Chunks, a.next)
	}
	if a.bytes += UpdateBytes(m); a.bytes > a.Limits.MaxUpdateBytes {
		return fail("update larger than %d bytes", a.Limits.MaxUpdateBytes)
	}
	h.Resources = append(h.Resources, m.Resources...)
	h.Removed = append(h.Removed, m.Removed...)
	a.next++
	if m.Chunk < m.Chunks {
		return nil, nil
	}
	a.held = nil
	return h, nil
}

// updateName names an update in an error: its version, and its nonce
// where it has one (agent streams; region links send none).
func updateName(m *wire.Message) string {
	if m.Nonce == "" {
		return fmt.Sprintf("update %d", m.Version)
	}
	return fmt.Sprintf("update %d (nonce %q)", m.Version, m.Nonce)
}
