// The global control plane's end of a region link: it takes the region's
// own objects (nodes, endpoints, services, …, owned by the region) and sends
// the region its view (regionView) as versioned deltas.

package control

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/store"
	"github.com/fogmesh/fogmesh/internal/syncproto"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// downLink is one region's link as the global control plane holds it.
type downLink struct {
	region string
	rc     *regionConn

	mu        sync.Mutex // guards the following
	upVersion uint64     // the region's last update applied here, on this link
	acked     uint64     // the last of our updates the region applied
}

// RegionLink is a connected region, for status and tests.
type RegionLink struct {
	Region string `json:"region"`
	// Version is the region's store revision of its last update applied
	// here; Acked the last of this control plane's revisions it applied.
	Version uint64 `json:"version"`
	Acked   uint64 `json:"acked"`
}

// RegionLinks lists the regions linked to this (global) control plane.
func (s *Server) RegionLinks() []RegionLink {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []RegionLink
	for _, dl := range s.down {
		dl.mu.Lock()
		out = append(out, RegionLink{Region: dl.region, Version: dl.upVersion, Acked: dl.acked})
		dl.mu.Unlock()
	}
	return out
}

// authorizeRegion decides whether the sync client peer may link as
// region. In insecure mode any client may; in secure mode only the
// region's own certificate (issued by the root, not revoked: checked at
// the handshake by security.authorizeRegion) names the region it links.
func (s *Server) authorizeRegion(peer spiffeid.ID, region string) error {
	if s.sec == nil {
		return nil
	}
	name, ok := identity.ParseRegionID(peer)
	if !ok {
		return fmt.Errorf("region %s: %s is not a region identity", region, peer)
	}
	if name != region {
		return fmt.Errorf("region %s: the certificate is region %s's", region, name)
	}
	if s.sec.src.Denied(peer.String()) {
		return fmt.Errorf("region %s is revoked", region)
	}
	return nil
}

// serveRegionSync runs a secure replication link (ALPN
// fogmesh-region-sync/1): its hello must be a region hello. raw is the
// accepted connection, under which `fogmesh region revoke` closes it.
func (s *Server) serveRegionSync(ctx context.Context, raw net.Conn, c net.Conn, peer spiffeid.ID) error {
	name, ok := identity.ParseRegionID(peer)
	if !ok {
		return fmt.Errorf("%s is not a region identity", peer)
	}
	s.mu.Lock()
	s.streams[raw] = "region:" + name // revokeRegion closes it
	s.mu.Unlock()
	r := wire.NewReader(c)
	c.SetReadDeadline(time.Now().Add(s.outboundHandshake()))
	hello, err := r.Read()
	if err != nil {
		s.mBadFrames.Inc()
		return fmt.Errorf("read hello: %w", err)
	}
	if hello.Type != wire.TypeHello || !slices.Contains(hello.Capabilities, wire.CapRegion) {
		wire.Write(c, &wire.Message{Type: wire.TypeError, Error: "a region link starts with a region hello"})
		return errors.New("not a region hello")
	}
	return s.serveRegion(ctx, c, r, hello, peer)
}

// serveRegion runs a region link after its hello (wire.CapRegion).
func (s *Server) serveRegion(ctx context.Context, c net.Conn, r *wire.Reader, hello *wire.Message, peer spiffeid.ID) error {
	rc := s.newRegionConn(c, r, linkTimeout(s.cfg.HeartbeatInterval))
	refuse := func(err error) error {
		rc.write(&wire.Message{Type: wire.TypeError, Error: err.Error()})
		return err
	}
	region := ""
	if hello.Scope != nil {
		region = hello.Scope.Region
	}
	switch {
	case hello.Protocol != wire.ProtocolVersion:
		return refuse(fmt.Errorf("region link: protocol %d not supported (want %d)", hello.Protocol, wire.ProtocolVersion))
	case !regionRE.MatchString(region):
		return refuse(fmt.Errorf("region link: hello names region %q, not a DNS label", region))
	case s.cfg.Mode != ModeGlobal:
		return refuse(fmt.Errorf("region link: this control plane is the regional one of %s; link region %s to the global control plane", s.cfg.Region, region))
	}
	if err := s.authorizeRegion(peer, region); err != nil {
		return refuse(err)
	}
	dl := &downLink{region: region, rc: rc}
	s.mu.Lock()
	if s.down == nil {
		s.down = map[string]*downLink{}
	}
	if old := s.down[region]; old != nil {
		// The region came back over another link (a failover) before
		// this end timed the old one out: the newer one is the region.
		old.rc.c.Close()
	}
	s.down[region] = dl
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		if s.down[region] == dl {
			delete(s.down, region)
		}
		s.mu.Unlock()
	}()
	s.log.Info("control: region linked", "region", region, "remote", c.RemoteAddr())

	rev, _ := s.st.Rev()
	if err := rc.write(&wire.Message{Type: wire.TypeWelcome, Version: rev, StoreID: s.st.ID(),
		HeartbeatMillis: s.cfg.HeartbeatInterval.Milliseconds(), Features: []string{wire.FeatureRegionStats}}); err != nil {
		return err
	}
	sub, err := rc.read()
	if err != nil {
		return fmt.Errorf("region %s: read subscribe: %w", region, err)
	}
	if sub.Type != wire.TypeSubscribe {
		s.mBadFrames.Inc()
		return refuse(fmt.Errorf("region %s: expected subscribe, got %q", region, sub.Type))
	}
	// What the region holds of our objects, if it holds this store's:
	// the first update is then a delta against it, else a snapshot.
	held, full := map[string]uint64{}, true
	if sub.StoreID == s.st.ID() && sub.KnownVersion != 0 {
		full = false
		for _, r := range sub.Resources {
			held[storeKey(r.ResourceRef)] = r.Version
		}
	}

	asm := &syncproto.Assembler{Limits: rc.limits}
	ctx, cancel := context.WithCancel(ctx)
	senderDone := make(chan error, 1)
	go func() {
		err := s.sendRegionView(ctx, dl, held, full)
		if err != nil {
			s.log.Error("control: cannot send to region, closing its link", "region", region, "err", err)
			c.Close()
		}
		senderDone <- err
	}()
	defer func() { cancel(); c.Close(); <-senderDone }()

	for {
		m, err := rc.read()
		if err != nil {
			if errors.Is(err, io.EOF) || ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("region %s: read: %w", region, err)
		}
		switch m.Type {
		case wire.TypeHeartbeat:
			if n := s.takeRegionStats(region, m.NodeStats); n > 0 {
				s.mBadFrames.Inc()
				s.log.Warn("control: region stats refused: not the region's nodes, or over their bounds", "region", region, "refused", n)
			}
			if err := rc.write(&wire.Message{Type: wire.TypeHeartbeat}); err != nil {
				return err
			}
		case wire.TypeAck:
			dl.mu.Lock()
			dl.acked = max(dl.acked, m.Version)
			dl.mu.Unlock()
		case wire.TypeNack:
			return fmt.Errorf("region %s refused update %d: %s", region, m.Version, m.Error)
		case wire.TypeAudit:
			if err := rc.write(s.takeRegionAudit(region, m)); err != nil {
				return err
			}
		case wire.TypeUpdate:
			whole, err := asm.Take(m)
			if err == nil && whole == nil {
				continue // more chunks to come
			}
			if err == nil {
				m = whole
				err = s.applyFromRegion(dl, m)
			}
			if err != nil {
				s.mBadFrames.Inc()
				s.log.Warn("control: region update refused", "region", region, "version", m.Version, "err", err)
				return refuse(fmt.Errorf("region %s: update %d refused: %w", region, m.Version, err))
			}
			if err := rc.write(&wire.Message{Type: wire.TypeAck, Version: m.Version}); err != nil {
				return err
			}
		default:
			s.mBadFrames.Inc()
			return refuse(fmt.Errorf("region %s: unexpected %q on a region link", region, m.Type))
		}
	}
}

// sendRegionView sends the region its view: first a snapshot (full) or
// the difference from what it said it holds (held: key -> our version),
// then the difference after every commit that changes it (viewState).
func (s *Server) sendRegionView(ctx context.Context, dl *downLink, held map[string]uint64, full bool) error {
	vs := newViewState(s, dl.region, held)
	for {
		watch := s.st.Watch()
		m, err := vs.next(full)
		if err != nil {
			return err
		}
		if m != nil {
			if err := dl.rc.writeUpdate(m); err != nil {
				return err
			}
			s.mUpdates.Inc()
		}
		full = false
		select {
		case <-ctx.Done():
			return nil
		case <-watch:
		}
	}
}

// applyFromRegion stores a region's update of its own objects: all of it
// or, if anything in it is malformed, none. A full update replaces every
// object the region owns here. An object whose name another owner holds
// here is not taken (the global copy wins); the conflict is logged and
// audited.
func (s *Server) applyFromRegion(dl *downLink, m *wire.Message) error {
	u, err := decodeReplicaUpdate(m, func(owner string) error {
		if owner != dl.region {
			return fmt.Errorf("owner %q: region %s sends only its own objects", owner, dl.region)
		}
		return nil
	})
	if err != nil {
		return err
	}
	dl.mu.Lock()
	last := dl.upVersion
	dl.mu.Unlock()
	if !u.full {
		switch {
		case u.version == last:
			s.log.Info("control: duplicate region update skipped", "region", dl.region, "version", u.version)
			return nil
		case u.version < last:
			return fmt.Errorf("out of order: version %d after %d", u.version, last)
		}
	}
	var conflicts []conflict
	_, err = s.st.Update(func(tx *store.Tx) error {
		conflicts = nil
		puts := map[string]bool{}
		for _, o := range u.puts {
			key := api.ObjectKey(o)
			puts[key] = true
			if kv, ok := tx.Get(key); ok && ownerOf(kv) != dl.region {
				conflicts = append(conflicts, conflict{key: key, kept: ownerOf(kv), loser: dl.region, body: mustJSON(o)})
				continue
			}
			if err := putLocked(tx, o); err != nil {
				return fmt.Errorf("%s: %w", key, err)
			}
		}
		drop := u.removed
		if u.full {
			drop = nil
			for _, kv := range replicatedKVsLocked(tx) {
				if !puts[kv.Key] {
					drop = append(drop, kv.Key)
				}
			}
		}
		for _, key := range drop {
			if kv, ok := tx.Get(key); ok && ownerOf(kv) == dl.region {
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
	dl.mu.Lock()
	dl.upVersion = u.version
	dl.mu.Unlock()
	s.recordConflicts(conflicts)
	return nil
}
