// Chunked updates on a region link (docs/regions.md): a snapshot or a
// large delta goes in bounded chunks, as on an agent's stream
// (syncproto.SplitUpdate), and the receiver takes the update whole once
// its last chunk arrived (syncproto.Assembler, as an agent does), so a
// snapshot replaces nothing until complete.

package control

import (
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
