// What both ends of a region link share: the connection, the replicated
// kinds, and how a conflict is recorded.

package control

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/audit"
	"github.com/fogmesh/fogmesh/internal/store"
	"github.com/fogmesh/fogmesh/internal/syncproto"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// auditKindReplication is the audit record kind of replication conflicts.
const auditKindReplication = "replication"

// regionConn is one region link's connection: frames written whole under
// a lock with a write deadline, read with the link's read timeout.
type regionConn struct {
	c net.Conn
	r *wire.Reader

	limits syncproto.Limits // chunks of the updates written
	note   func(m *wire.Message, n int)

	mu      sync.Mutex // serialises writes
	timeout time.Duration
}

// linkTimeout is how long either end of a region link waits for the next
// frame: the region heartbeats every hb and the global plane answers each,
// so three silent intervals (at least 2 s) mean the link is gone, as on
// an agent's stream.
func linkTimeout(hb time.Duration) time.Duration { return max(3*hb, 2*time.Second) }

func (s *Server) newRegionConn(c net.Conn, r *wire.Reader, timeout time.Duration) *regionConn {
	if r == nil {
		r = wire.NewReader(c)
	}
	return &regionConn{c: c, r: r, timeout: timeout, limits: s.regionLimits(), note: s.noteFrame}
}

func (rc *regionConn) write(m *wire.Message) error {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.writeLocked(m)
}

func (rc *regionConn) writeLocked(m *wire.Message) error {
	rc.c.SetWriteDeadline(time.Now().Add(30 * time.Second))
	n, err := wire.WriteFrame(rc.c, m)
	if err == nil && rc.note != nil {
		rc.note(m, n)
	}
	return err
}

// read waits for the next frame, at most the link's timeout: each end
// hears from the other at least every heartbeat interval.
func (rc *regionConn) read() (*wire.Message, error) {
	rc.c.SetReadDeadline(time.Now().Add(rc.timeout))
	return rc.r.Read()
}

// ownerOf reads the owner of a stored object.
func ownerOf(kv store.KV) string {
	var m struct {
		Meta api.Meta `json:"metadata"`
	}
	json.Unmarshal(kv.Value, &m)
	return m.Meta.Owner
}

// replicatedKVsLocked lists every stored object of the replicated kinds.
func replicatedKVsLocked(tx *store.Tx) []store.KV {
	var out []store.KV
	for _, kind := range syncproto.AllTypes {
		out = append(out, tx.List(kind+"/")...)
	}
	return out
}

// refOfKey is the resource reference of a store key.
func refOfKey(key string) wire.ResourceRef {
	kind, name, _ := strings.Cut(key, "/")
	return wire.ResourceRef{Type: kind, Name: name}
}

// conflict is an object two control planes wrote under one name: the copy
// of kept survives, loser's is dropped.
type conflict struct {
	key         string
	kept, loser string
	body        []byte // the dropped copy
}

// maxAuditBody bounds the dropped copy kept in a conflict's audit record.
const maxAuditBody = 4 << 10

// recordConflicts logs and audits conflicts, so no dropped copy vanishes
// silently: the audit record holds it.
func (s *Server) recordConflicts(cs []conflict) {
	for _, c := range cs {
		s.log.Warn("control: replication conflict: kept the global control plane's copy",
			"object", c.key, "kept", ownerName(c.kept), "dropped", ownerName(c.loser))
		body := string(c.body)
		if len(body) > maxAuditBody {
			body = body[:maxAuditBody] + "…"
		}
		if err := s.Audit(audit.Record{Kind: auditKindReplication, Actor: ownerName(c.loser), Action: "conflict", Object: c.key,
			Reason: fmt.Sprintf("kept the copy of %s, dropped the copy of %s: %s", ownerName(c.kept), ownerName(c.loser), body)}); err != nil {
			s.log.Error("control: audit replication conflict", "object", c.key, "err", err)
		}
	}
}

// replicated reports whether objects of kind cross region links.
func replicated(kind string) bool { return slices.Contains(syncproto.AllTypes, kind) }

// mustJSON encodes an object decoded from JSON, which cannot fail.
func mustJSON(o api.Object) []byte {
	b, _ := json.Marshal(o)
	return b
}

// RegionsResponse is the body of GET /v1/regions: where this control plane
// sits in the hierarchy and the state of its links.
type RegionsResponse struct {
	Mode   string `json:"mode"`
	Region string `json:"region,omitempty"`
	// Upstream is a regional plane's link to the global one.
	Upstream *UpstreamStatus `json:"upstream,omitempty"`
	// Links are the regions linked to a global plane.
	Links []RegionLink `json:"links"`
}

func (s *Server) handleRegions(w http.ResponseWriter, r *http.Request) {
	resp := RegionsResponse{Mode: s.cfg.Mode, Region: s.cfg.Region, Links: s.RegionLinks()}
	if resp.Links == nil {
		resp.Links = []RegionLink{}
	}
	slices.SortFunc(resp.Links, func(a, b RegionLink) int { return strings.Compare(a.Region, b.Region) })
	if s.up != nil {
		st := s.Upstream()
		resp.Upstream = &st
	}
	writeJSON(w, http.StatusOK, resp)
}
