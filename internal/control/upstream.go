// The regional control plane's end of its link to the global one: it
// dials the upstreams in turn, sends its region's own objects (a snapshot
// on every link, then deltas) and stores what the global one sends it.

package control

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/store"
	"github.com/fogmesh/fogmesh/internal/syncproto"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// upLink is a regional control plane's link to the global one. What it
// learnt of the upstream (held, applied) is kept in a side file too
// (upcopy.go), so a restart resumes with a delta.
type upLink struct {
	s      *Server
	region string
	addrs  []string

	copyPath   string        // the side file
	copySig    chan struct{} // wakes persistCopy
	copyWrites atomic.Int64  // side file writes (tests)
	mSnapshots *metrics.Counter
	mDeltas    *metrics.Counter

	mu        sync.Mutex // guards the following
	connected bool
	addr      string            // the upstream of the current or last link
	storeID   string            // the upstream's store
	applied   uint64            // the upstream version last applied
	held      map[string]uint64 // replica key -> upstream version
	acked     uint64            // our last revision the upstream applied
	lastErr   string
	fulls     int                       // snapshots applied: a resumed link adds none
	deltas    int                       // other updates applied
	audit     map[string]*AuditUpStatus // chain -> what the upstream holds of it
}

// snapshots counts the full updates applied from upstream.
func (u *upLink) snapshots() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.fulls
}

func newUpLink(s *Server) *upLink {
	u := &upLink{s: s, region: s.cfg.Region, addrs: s.cfg.Upstreams, held: map[string]uint64{},
		copyPath: upCopyPath(s.cfg.StateDir), copySig: make(chan struct{}, 1)}
	u.mSnapshots = s.cfg.Metrics.NewCounter(`fogmesh_control_upstream_updates_total{kind="snapshot"}`)
	u.mDeltas = s.cfg.Metrics.NewCounter(`fogmesh_control_upstream_updates_total{kind="delta"}`)
	u.loadUpCopy()
	s.cfg.Metrics.NewGauge(`fogmesh_control_upstream_connected`, func() float64 {
		if s.Upstream().Connected {
			return 1
		}
		return 0
	})
	return u
}

// UpstreamStatus is a regional control plane's link to the global one.
type UpstreamStatus struct {
	Connected bool   `json:"connected"`
	Upstream  string `json:"upstream,omitempty"`
	StoreID   string `json:"storeId,omitempty"`
	// Version is the upstream's store revision last applied here; Acked
	// the last of this control plane's revisions the upstream applied.
	Version uint64 `json:"version"`
	Acked   uint64 `json:"acked"`
	// Snapshots and Deltas count the updates applied from upstream since
	// this process started: a restart that resumed from the side file
	// adds a delta, not a snapshot.
	Snapshots int `json:"snapshots"`
	Deltas    int `json:"deltas"`
	// Error is why the last link ended, if it failed.
	Error string `json:"error,omitempty"`
	// Audit lists the audit chains shipped up (docs/regions.md).
	Audit []AuditUpStatus `json:"audit,omitempty"`
}

// Upstream reports the link to the global control plane (zero in
// ModeGlobal).
func (s *Server) Upstream() UpstreamStatus {
	if s.up == nil {
		return UpstreamStatus{}
	}
	u := s.up
	chains := u.auditStatus()
	u.mu.Lock()
	defer u.mu.Unlock()
	return UpstreamStatus{Connected: u.connected, Upstream: u.addr, StoreID: u.storeID, Version: u.applied, Acked: u.acked,
		Snapshots: u.fulls, Deltas: u.deltas, Error: u.lastErr, Audit: chains}
}

// upstreamDial connects to a global control plane's sync port: the one
// place the link's transport is decided. Insecure mode dials plain TCP;
// the regional identity (TLS with the region's certificate, checked
// against the global CA) plugs in here.
func (s *Server) upstreamDial(ctx context.Context, addr string) (net.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := s.cfg.Network.Dial(dctx, "tcp", addr)
	if err != nil || s.sec == nil {
		return c, err
	}
	tc := tls.Client(c, s.RegionClientConfig(identity.ALPNRegionSync))
	if err := tc.HandshakeContext(dctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("TLS handshake (%s): %w", identity.HandshakeReason(err), err)
	}
	return tc, nil
}

// run keeps a link up until ctx ends: it tries the upstreams in order,
// moving to the next at once when one fails, and backs off (with jitter,
// up to 5 s) once it went round them all.
func (u *upLink) run(ctx context.Context) {
	persisted := make(chan struct{})
	go func() { u.persistCopy(ctx); close(persisted) }()
	defer func() { <-persisted }()
	const minBackoff, maxBackoff = 100 * time.Millisecond, 5 * time.Second
	backoff := minBackoff
	for i := 0; ctx.Err() == nil; i++ {
		addr := u.addrs[i%len(u.addrs)]
		welcomed, err := u.once(ctx, addr)
		u.mu.Lock()
		u.connected = false
		if err != nil {
			u.lastErr = err.Error()
		}
		u.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
		u.s.log.Warn("control: upstream link ended", "upstream", addr, "err", err)
		if welcomed {
			backoff = minBackoff
		}
		if (i+1)%len(u.addrs) != 0 && !welcomed {
			continue // fail over to the next upstream at once
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		backoff = min(2*backoff, maxBackoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// once runs one link to addr; welcomed says whether the upstream took it.
func (u *upLink) once(ctx context.Context, addr string) (welcomed bool, err error) {
	s := u.s
	c, err := s.upstreamDial(ctx, addr)
	if err != nil {
		return false, fmt.Errorf("dial upstream %s: %w", addr, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer func() { cancel(); stop(); c.Close() }()

	rc := s.newRegionConn(c, nil, 10*time.Second)
	if err := rc.write(&wire.Message{Type: wire.TypeHello, Protocol: wire.ProtocolVersion,
		Capabilities: []string{wire.CapRegion}, Scope: &wire.Scope{Region: u.region}}); err != nil {
		return false, fmt.Errorf("upstream %s: hello: %w", addr, err)
	}
	w, err := rc.read()
	if err != nil {
		return false, fmt.Errorf("upstream %s: read welcome: %w", addr, err)
	}
	switch {
	case w.Type == wire.TypeError:
		return false, fmt.Errorf("upstream %s refused the link: %s", addr, w.Error)
	case w.Type != wire.TypeWelcome || w.StoreID == "":
		return false, fmt.Errorf("upstream %s: expected welcome with a store ID, got %q", addr, w.Type)
	}
	hb := time.Duration(w.HeartbeatMillis) * time.Millisecond
	if hb <= 0 {
		hb = 5 * time.Second
	}
	rc.timeout = linkTimeout(hb)

	// Resubscribe with what we hold of this upstream store, so the first
	// update is a delta; another store (a new global plane) starts over.
	sub := &wire.Message{Type: wire.TypeSubscribe, Scope: &wire.Scope{Region: u.region}}
	u.mu.Lock()
	if w.StoreID != u.storeID {
		u.storeID, u.applied, u.held = w.StoreID, 0, map[string]uint64{}
	}
	sub.StoreID, sub.KnownVersion = u.storeID, u.applied
	for key, v := range u.held {
		sub.Resources = append(sub.Resources, wire.Resource{ResourceRef: refOfKey(key), Version: v})
	}
	u.addr, u.connected, u.lastErr = addr, true, ""
	u.mu.Unlock()
	if err := rc.write(sub); err != nil {
		return true, fmt.Errorf("upstream %s: subscribe: %w", addr, err)
	}
	s.log.Info("control: linked to upstream", "upstream", addr, "region", u.region, "known", sub.KnownVersion)

	senderDone := make(chan error, 1)
	acks := make(chan *wire.Message, 1) // auditAcks, to the sender
	go func() {
		err := u.sendOwn(ctx, rc, hb, acks, slices.Contains(w.Features, wire.FeatureRegionStats))
		if err != nil {
			c.Close()
		}
		senderDone <- err
	}()
	defer func() {
		cancel()
		c.Close()
		if serr := <-senderDone; err == nil && serr != nil {
			err = serr
		}
	}()

	asm := &syncproto.Assembler{Limits: rc.limits}
	for {
		m, err := rc.read()
		if err != nil {
			if ctx.Err() != nil {
				return true, nil
			}
			if errors.Is(err, io.EOF) {
				return true, fmt.Errorf("upstream %s closed the link", addr)
			}
			return true, fmt.Errorf("upstream %s: read: %w", addr, err)
		}
		switch m.Type {
		case wire.TypeHeartbeat:
		case wire.TypeAck:
			u.mu.Lock()
			u.acked = max(u.acked, m.Version)
			u.mu.Unlock()
		case wire.TypeAuditAck:
			select {
			case acks <- m:
			default: // the sender waits for one at a time
				s.mBadFrames.Inc()
				return true, fmt.Errorf("upstream %s: auditAck for chain %s not asked for", addr, m.AuditChain)
			}
		case wire.TypeError:
			return true, fmt.Errorf("upstream %s: %s", addr, m.Error)
		case wire.TypeUpdate:
			whole, err := asm.Take(m)
			if err == nil && whole == nil {
				continue // more chunks to come
			}
			if err == nil {
				m = whole
				err = u.apply(m)
			}
			if err != nil {
				s.mBadFrames.Inc()
				// The store keeps the last good state; the next link
				// starts from a snapshot.
				u.mu.Lock()
				u.applied, u.held = 0, map[string]uint64{}
				u.mu.Unlock()
				u.noteCopy()
				rc.write(&wire.Message{Type: wire.TypeNack, Version: m.Version, Error: err.Error()})
				return true, fmt.Errorf("upstream %s: update %d refused: %w", addr, m.Version, err)
			}
			if err := rc.write(&wire.Message{Type: wire.TypeAck, Version: m.Version}); err != nil {
				return true, err
			}
		default:
			s.mBadFrames.Inc()
			return true, fmt.Errorf("upstream %s: unexpected %q on a region link", addr, m.Type)
		}
	}
}

// sendOwn sends the region's own objects up: all of them first (the
// upstream replaces what it held of the region with them), then what
// changed after every commit, and a heartbeat every hb. After each update
// and heartbeat it ships what the upstream lacks of the audit chains of
// the nodes sent so far and of this control plane (auditup.go).
func (u *upLink) sendOwn(ctx context.Context, rc *regionConn, hb time.Duration, acks <-chan *wire.Message, stats bool) error {
	s := u.s
	statsSent := map[string]*sentStats{} // stats.go, statsup.go
	tick := time.NewTicker(hb)
	defer tick.Stop()
	var sent uint64
	full := true
	ships := map[string]*auditShip{}
	for {
		watch := s.st.Watch()
		// Read before the update: every node listed is in what is sent,
		// so the upstream knows a chain's node before its records.
		nodes := u.regionNodes()
		m, rev, err := u.ownUpdate(sent, full)
		if errors.Is(err, store.ErrCompacted) {
			full = true
			m, rev, err = u.ownUpdate(sent, full)
		}
		if err != nil {
			return err
		}
		if m != nil {
			if err := rc.writeUpdate(m); err != nil {
				return err
			}
		}
		sent, full = rev, false
		more, err := u.shipAudit(ctx, rc, acks, ships, nodes)
		if err != nil {
			if ctx.Err() != nil {
				return nil // the link ended
			}
			return err
		}
		for again := more; !again; {
			select {
			case <-ctx.Done():
				return nil
			case <-tick.C:
				hbm := &wire.Message{Type: wire.TypeHeartbeat}
				if stats {
					hbm.NodeStats = s.stats.upReports(statsSent, wire.MaxNodeStatRows, time.Now())
				}
				if err := rc.write(hbm); err != nil {
					return err
				}
				if again, err = u.shipAudit(ctx, rc, acks, ships, nodes); err != nil {
					if ctx.Err() != nil {
						return nil
					}
					return err
				}
			case <-watch:
				again = true
			}
		}
	}
}

// ownUpdate is the update of the region's own objects after revision
// since (all of them if full); nil if none changed.
func (u *upLink) ownUpdate(since uint64, full bool) (*wire.Message, uint64, error) {
	s := u.s
	if full {
		objs, rev, err := s.reg.list("")
		if err != nil {
			return nil, 0, err
		}
		m := &wire.Message{Type: wire.TypeUpdate, Full: true, Version: rev, StoreID: s.st.ID()}
		for _, o := range objs {
			if o.GetMeta().Owner != u.region {
				continue
			}
			r, err := wire.NewResource(o)
			if err != nil {
				return nil, 0, err
			}
			m.Resources = append(m.Resources, r)
		}
		return m, rev, nil
	}
	changes, rev, err := s.st.ChangesSince(since)
	if err != nil {
		return nil, 0, err
	}
	m := &wire.Message{Type: wire.TypeUpdate, Version: rev, StoreID: s.st.ID()}
	for _, ch := range changes {
		ref := refOfKey(ch.Key)
		if !replicated(ref.Type) {
			continue
		}
		if ch.Deleted {
			m.Removed = append(m.Removed, ref)
			continue
		}
		o, err := decodeKV(store.KV{Key: ch.Key, Rev: ch.Rev, Value: ch.Value})
		if err != nil {
			return nil, 0, err
		}
		if o.GetMeta().Owner != u.region {
			continue // a replica: its owner sends it
		}
		r, err := wire.NewResource(o)
		if err != nil {
			return nil, 0, err
		}
		m.Resources = append(m.Resources, r)
	}
	if len(m.Resources)+len(m.Removed) == 0 {
		return nil, rev, nil
	}
	return m, rev, nil
}

// apply stores an update from the upstream: all of it or nothing. Objects
// this region owns never come from upstream (a malformed update); a full
// update replaces every replica; a name this region also created while
// cut off takes the upstream's copy (the global one wins), and the
// dropped local copy is logged and audited.
func (u *upLink) apply(m *wire.Message) error {
	s := u.s
	up, err := decodeReplicaUpdate(m, func(owner string) error {
		if owner == u.region {
			return fmt.Errorf("the upstream sent an object owned by this region (%s)", u.region)
		}
		return nil
	})
	if err != nil {
		return err
	}
	u.mu.Lock()
	storeID, applied := u.storeID, u.applied
	held := u.held
	u.mu.Unlock()
	if m.StoreID != storeID {
		return fmt.Errorf("update of store %q on a link to store %q", m.StoreID, storeID)
	}
	if !up.full {
		switch {
		case up.version == applied:
			s.log.Info("control: duplicate upstream update skipped", "version", up.version)
			return nil
		case up.version < applied:
			return fmt.Errorf("out of order: version %d after %d", up.version, applied)
		}
	}
	versions := make([]uint64, len(up.puts)) // putLocked overwrites Meta.Version
	for i, o := range up.puts {
		versions[i] = o.GetMeta().Version
	}
	var next map[string]uint64
	var conflicts []conflict
	_, err = s.st.Update(func(tx *store.Tx) error {
		next, conflicts = make(map[string]uint64, len(held)), nil
		if !up.full {
			for k, v := range held {
				next[k] = v
			}
		}
		puts := map[string]bool{}
		for i, o := range up.puts {
			key := api.ObjectKey(o)
			puts[key] = true
			v := versions[i]
			if !up.full && held[key] > v {
				continue // older than what we hold: a stale resend
			}
			if kv, ok := tx.Get(key); ok && ownerOf(kv) == u.region {
				conflicts = append(conflicts, conflict{key: key, kept: o.GetMeta().Owner, loser: u.region, body: kv.Value})
			}
			if err := putLocked(tx, o); err != nil {
				return fmt.Errorf("%s: %w", key, err)
			}
			next[key] = v
		}
		drop := up.removed
		if up.full {
			drop = nil
			for _, kv := range replicatedKVsLocked(tx) {
				if !puts[kv.Key] {
					drop = append(drop, kv.Key)
				}
			}
		}
		for _, key := range drop {
			delete(next, key)
			if kv, ok := tx.Get(key); ok && ownerOf(kv) != u.region {
				if err := tx.Delete(key); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	u.mu.Lock()
	u.applied, u.held = up.version, next
	if up.full {
		u.fulls++
		u.mSnapshots.Inc()
	} else {
		u.deltas++
		u.mDeltas.Inc()
	}
	u.mu.Unlock()
	u.noteCopy()
	s.recordConflicts(conflicts)
	return nil
}
