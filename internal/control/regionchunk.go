// Chunked updates on a region link (docs/regions.md): a snapshot or a
// large delta goes in bounded chunks, as on an agent's stream
// (syncproto.SplitUpdate), and the receiver takes the update whole once
// its last chunk arrived, so a snapshot replaces nothing until complete.

package control

import (
	"errors"
	"fmt"

	"github.com/fogmesh/fogmesh/internal/syncproto"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// regionLimits are the chunk bounds of this control plane's region links.
func (s *Server) regionLimits() syncproto.Limits {
	if s.cfg.regionLimits != (syncproto.Limits{}) {
		return s.cfg.regionLimits
	}
	return syncproto.DefaultLimits
}

// writeUpdate sends update m within rc's limits: whole if it fits one
// chunk, else in chunks 1..n written back to back (no other frame of this
// end between them).
func (rc *regionConn) writeUpdate(m *wire.Message) error {
	frames, err := syncproto.SplitUpdate(m, rc.limits)
	if err != nil {
		return err
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	for _, f := range frames {
		if err := rc.writeLocked(f); err != nil {
			return err
		}
	}
	return nil
}

// assembler holds the chunks of one update from the other end of a region
// link until the last one. The reader goroutine alone uses it.
type assembler struct {
	limits syncproto.Limits
	asm    *wire.Message // the chunks taken so far; nil between updates
	chunks int           // asm's chunk count
	next   int           // the chunk due next
	bytes  int           // resource bodies and names held
}

// errChunk marks a malformed chunk sequence.
var errChunk = errors.New("bad chunk")

// take returns the whole update once m completes it: m itself if it is
// not chunked, nil while chunks are missing. A chunk out of order, of
// another update, beyond the limits, or an unchunked update while one is
// incomplete is an error (wrapping errChunk); what was held is dropped.
func (a *assembler) take(m *wire.Message) (*wire.Message, error) {
	fail := func(format string, args ...any) (*wire.Message, error) {
		a.asm = nil
		return nil, fmt.Errorf("%w: "+format, append([]any{errChunk}, args...)...)
	}
	if m.Chunk == 0 && m.Chunks == 0 {
		if a.asm != nil {
			return fail("update %d sent whole while chunk %d of %d of update %d is due", m.Version, a.next, a.chunks, a.asm.Version)
		}
		return m, nil
	}
	if m.Chunks < 2 || m.Chunks > a.limits.MaxChunks || m.Chunk < 1 || m.Chunk > m.Chunks {
		return fail("malformed chunk %d of %d (at most %d chunks)", m.Chunk, m.Chunks, a.limits.MaxChunks)
	}
	if a.asm == nil {
		if m.Chunk != 1 {
			return fail("chunk %d of %d of update %d without the chunks before it", m.Chunk, m.Chunks, m.Version)
		}
		c := *m
		c.Chunk, c.Chunks = 0, 0
		c.Resources, c.Removed = append([]wire.Resource(nil), m.Resources...), append([]wire.ResourceRef(nil), m.Removed...)
		a.asm, a.chunks, a.next, a.bytes = &c, m.Chunks, 2, syncproto.UpdateBytes(m)
		if a.bytes > a.limits.MaxUpdateBytes {
			return fail("update %d larger than %d bytes", m.Version, a.limits.MaxUpdateBytes)
		}
		return nil, nil
	}
	if m.Version != a.asm.Version || m.StoreID != a.asm.StoreID || m.Full != a.asm.Full || m.Chunks != a.chunks {
		return fail("chunk %d of %d of update %d while update %d is incomplete", m.Chunk, m.Chunks, m.Version, a.asm.Version)
	}
	if m.Chunk != a.next {
		return fail("chunk %d of %d of update %d where chunk %d was due", m.Chunk, m.Chunks, m.Version, a.next)
	}
	if a.bytes += syncproto.UpdateBytes(m); a.bytes > a.limits.MaxUpdateBytes {
		return fail("update %d larger than %d bytes", m.Version, a.limits.MaxUpdateBytes)
	}
	a.asm.Resources = append(a.asm.Resources, m.Resources...)
	a.asm.Removed = append(a.asm.Removed, m.Removed...)
	a.next++
	if m.Chunk < m.Chunks {
		return nil, nil
	}
	whole := a.asm
	a.asm = nil
	return whole, nil
}
