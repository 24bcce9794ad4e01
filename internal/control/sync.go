package control

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/audit"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/store"
	"github.com/fogmesh/fogmesh/internal/syncproto"
	"github.com/fogmesh/fogmesh/internal/wire"
)

func (s *Server) acceptSync(ctx context.Context) error {
	for {
		c, err := s.syncLn.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			// EMFILE and friends: back off, keep accepting.
			s.log.Warn("control: sync accept", "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		s.mu.Lock()
		s.streams[c] = ""
		s.mu.Unlock()
		s.mStreams.Inc()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() {
				s.mu.Lock()
				delete(s.streams, c)
				s.mu.Unlock()
				c.Close()
			}()
			conn, peer := c, spiffeid.ID{}
			if s.sec != nil {
				tc, err := identity.ServerHandshake(ctx, c, s.sec.syncTLS, 10*time.Second)
				if err != nil {
					reason := identity.HandshakeReason(err)
					s.sec.tlsFailure(reason)
					s.log.Warn("control: sync TLS handshake refused", "remote", c.RemoteAddr(), "reason", reason, "err", err)
					return
				}
				if tc.ConnectionState().NegotiatedProtocol == identity.ALPNJoin {
					if err := s.sec.serveJoin(tc); err != nil {
						s.log.Warn("control: join refused", "remote", c.RemoteAddr(), "err", err)
					}
					return
				}
				if peer, err = identity.PeerID(tc.ConnectionState()); err != nil {
					return
				}
				switch tc.ConnectionState().NegotiatedProtocol {
				case identity.ALPNRegion:
					if err := s.serveRegionTrust(ctx, tc, peer); err != nil {
						s.log.Info("control: region stream ended", "remote", c.RemoteAddr(), "region", peer.String(), "err", err)
					}
					return
				case identity.ALPNRegionSync:
					if err := s.serveRegionSync(ctx, c, tc, peer); err != nil {
						s.log.Info("control: region link ended", "remote", c.RemoteAddr(), "region", peer.String(), "err", err)
					}
					return
				}
				if tc.ConnectionState().NegotiatedProtocol == identity.ALPNRelay {
					if err := s.serveRelay(ctx, tc, peer); err != nil {
						s.log.Info("control: relay stream ended", "remote", c.RemoteAddr(), "relay", peer.String(), "err", err)
					}
					return
				}
				conn = tc
			}
			if err := s.serveStream(ctx, conn, peer); err != nil {
				s.log.Info("control: sync stream ended", "remote", c.RemoteAddr(), "err", err)
			}
		}()
	}
}

// stream is one agent's sync connection: the I/O around the protocol's
// state machine (internal/syncproto.Control), which says what each frame
// means and what may be sent when.
type stream struct {
	s    *Server
	c    net.Conn
	node string

	mu sync.Mutex // serialises the machine's steps and the writes of their frames
	sm *syncproto.Control

	sub chan syncproto.Subscribed // the subscription, handed to the sender
}

// step feeds the machine one event and writes the frames it returns. When
// the machine ends the stream, its frames (a refusal) are written best
// effort and its error returned; else the first write error.
func (st *stream) step(ev syncproto.Event) ([]syncproto.Effect, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	out := st.sm.Step(ev)
	for _, m := range out.Send {
		st.c.SetWriteDeadline(time.Now().Add(30 * time.Second))
		n, err := wire.WriteFrame(st.c, m)
		if err != nil && out.Err == nil {
			return out.Effects, err
		}
		st.s.noteFrame(m, n)
	}
	return out.Effects, out.Err
}

// noteFrame records the size of a frame written to an agent.
func (s *Server) noteFrame(m *wire.Message, n int) {
	if m.Chunks > 0 {
		s.mChunks.Inc()
	}
	for {
		old := s.maxFrame.Load()
		if int64(n) <= old || s.maxFrame.CompareAndSwap(old, int64(n)) {
			return
		}
	}
}

// write sends a frame the control plane originates (an update, an answer,
// trust), if the machine lets it.
func (st *stream) write(m *wire.Message) error {
	_, err := st.step(syncproto.Send{Msg: m})
	return err
}

// serveStream runs one agent connection: hello, then a reader loop for
// acks/heartbeats/local endpoints and a sender for updates.
//
// peer is the TLS client's node identity (zero in insecure mode): the hello
// must name that node and site.
func (s *Server) serveStream(ctx context.Context, c net.Conn, peer spiffeid.ID) error {
	var pn *syncproto.PeerNode
	if !peer.IsZero() {
		site, node, _ := identity.ParseNodeID(peer)
		pn = &syncproto.PeerNode{Site: site, Node: node}
	}
	st := &stream{s: s, c: c, sm: syncproto.NewControl(pn, s.cfg.HeartbeatInterval), sub: make(chan syncproto.Subscribed, 1)}
	r := wire.NewReader(c)
	// Every message, heartbeats included, must arrive within the machine's
	// read timeout, so a silent or slow sender is dropped.
	readTimeout := st.sm.ReadTimeout()
	c.SetReadDeadline(time.Now().Add(readTimeout))
	hello, err := r.Read()
	if err != nil {
		s.mBadFrames.Inc()
		return fmt.Errorf("read hello: %w", err)
	}
	if slices.Contains(hello.Capabilities, wire.CapRegion) {
		return s.serveRegion(ctx, c, r, hello, peer) // downstream.go
	}
	effs, err := st.step(syncproto.Recv{Msg: hello})
	var admit syncproto.Admit
	for _, e := range effs {
		switch e := e.(type) {
		case syncproto.Admit:
			admit = e
		default:
			st.count(e)
		}
	}
	if err != nil {
		return err
	}
	st.node = admit.Node.Meta.Name
	if err := s.admitRegion(admit.Node); err != nil { // export.go
		_, err = st.step(syncproto.Reject{Reason: err.Error(), Err: err})
		return err
	}
	if pn != nil {
		reject := func(reason string, err error) error {
			_, err = st.step(syncproto.Reject{Reason: reason, Err: err})
			return err
		}
		if s.sec.revoked(st.node) {
			return reject("node "+st.node+" is revoked", fmt.Errorf("node %s is revoked", st.node))
		}
		if err := s.checkNodeSite(st.node, pn.Site); err != nil {
			s.sec.tlsFailure(identity.ReasonUnauthorized)
			return reject(err.Error(), err)
		}
	}
	if err := s.reg.registerNode(admit.Node); errors.Is(err, store.ErrUnavailable) {
		// etcd down or without quorum: serve the agent what the store
		// last showed; its registration is written when it reconnects.
		s.log.Warn("control: store unavailable; agent served without recording its registration", "node", st.node, "err", err)
	} else if err != nil {
		return fmt.Errorf("register node %s: %w", st.node, err)
	}
	s.mu.Lock()
	s.streams[c] = st.node // c may be the TLS conn over the accepted one: closing either ends both
	l := s.liveLocked(st.node)
	l.conns++
	l.lastHeartbeat = time.Now()
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.live[st.node].conns--
		delete(s.streams, c)
		s.mu.Unlock()
	}()
	s.log.Info("control: agent connected", "node", st.node, "remote", c.RemoteAddr())
	rev, _ := s.st.Rev()
	welcome := syncproto.Admitted{Version: rev, StoreID: s.st.ID()}
	if s.sec != nil && !peer.IsZero() {
		welcome.Features = append(welcome.Features, wire.FeatureSVID, wire.FeatureSVIDBatch)
	}
	if seq, hash, err := s.auditLast(st.node); err == nil {
		welcome.Features, welcome.AuditSeq, welcome.AuditHash = append(welcome.Features, wire.FeatureAudit), seq, hash
	} else {
		s.log.Error("control: audit replica unusable; not taking audit records", "node", st.node, "err", err)
	}
	if _, err := st.step(welcome); err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	senderDone := make(chan error, 1)
	go func() {
		err := st.sendLoop(ctx)
		if err != nil {
			// A stream that can no longer send updates must not look alive.
			s.log.Error("control: cannot send updates, closing stream", "node", st.node, "err", err)
			c.Close()
		}
		senderDone <- err
	}()
	defer func() { cancel(); c.Close(); <-senderDone }()
	if s.sec != nil && admit.Trust {
		trustDone := make(chan struct{})
		go func() {
			defer close(trustDone)
			s.sec.trustLoop(ctx, st)
		}()
		defer func() { cancel(); c.Close(); <-trustDone }()
	}

	for {
		c.SetReadDeadline(time.Now().Add(readTimeout))
		m, err := r.Read()
		if err != nil {
			if errors.Is(err, io.EOF) || ctx.Err() != nil {
				return nil
			}
			if !errors.Is(err, net.ErrClosed) {
				s.mBadFrames.Inc()
			}
			return fmt.Errorf("node %s: read: %w", st.node, err)
		}
		effs, err := st.step(syncproto.Recv{Msg: m})
		for _, e := range effs {
			if err := st.do(e, peer); err != nil {
				return err
			}
		}
		if err != nil {
			return err
		}
	}
}

// count records the counters the machine's effects name.
func (st *stream) count(e syncproto.Effect) {
	switch e.(type) {
	case syncproto.BadFrame:
		st.s.mBadFrames.Inc()
	case syncproto.OldAgent:
		st.s.mOldAgents.Inc()
	case syncproto.Unauthorized:
		st.s.sec.tlsFailure(identity.ReasonUnauthorized)
	}
}

// do carries out one effect of a frame received on a running stream; an
// error ends the stream.
func (st *stream) do(e syncproto.Effect, peer spiffeid.ID) error {
	s := st.s
	switch e := e.(type) {
	case syncproto.Subscribed:
		st.sub <- e // the machine allows one subscribe per stream, and sub holds one
	case syncproto.Acked:
		s.mu.Lock()
		s.liveLocked(st.node).acked = e.Version
		s.mu.Unlock()
	case syncproto.Nacked:
		s.log.Warn("control: agent rejected update", "node", st.node, "version", e.Version, "nonce", e.Nonce, "err", e.Error)
	case syncproto.Heartbeat:
		s.heartbeat(st.node, e.Load, e.EndpointLoad, e.Paths)
		// Answer, so the agent can tell a silent link from a quiet one,
		// with the load the other agents put on each endpoint.
		return st.write(&wire.Message{Type: wire.TypeHeartbeat, EndpointLoad: s.othersLoad(st.node)})
	case syncproto.SessionsIn:
		for _, err := range e.Refused {
			s.log.Warn("control: agent session refused", "node", st.node, "err", err)
		}
		objs := make([]api.Object, 0, len(e.Valid))
		for i := range e.Valid {
			objs = append(objs, &e.Valid[i])
		}
		if _, err := s.reg.apply(objs); err != nil {
			s.log.Warn("control: store sessions", "node", st.node, "err", err)
		}
	case syncproto.AuditIn:
		m := e.Msg
		ack := &wire.Message{Type: wire.TypeAuditAck}
		recs, err := audit.DecodeBatch(m.Audit)
		if err == nil && m.AuditRestart {
			err = s.restartAuditChain(st.node, recs)
		}
		if err == nil {
			ack.AuditSeq, err = s.ingestAudit(st.node, recs)
		}
		if err != nil {
			s.log.Warn("control: audit batch refused", "node", st.node, "records", len(m.Audit), "err", err)
			ack.Error = "audit: " + err.Error()
		}
		return st.write(ack)
	case syncproto.RenewIn:
		if err := s.renew(st, peer, e.Msg); err != nil {
			s.log.Warn("control: renewal refused", "node", st.node, "err", err)
			st.write(&wire.Message{Type: wire.TypeError, Error: "renew: " + err.Error()})
			if errors.Is(err, errRevoked) {
				return err
			}
		}
	case syncproto.SVIDIn:
		ans := &wire.Message{Type: wire.TypeSVIDIssued, Nonce: e.Msg.Nonce}
		chains, err := s.issueSVID(st.node, peer, e.Msg)
		if err != nil {
			s.log.Warn("control: workload SVID refused", "node", st.node, "err", err)
			ans.Error = err.Error()
		} else {
			ans.Certificates = identity.DERs(chains[0])
			for _, c := range chains[1:] {
				ans.SVIDBatch = append(ans.SVIDBatch, identity.DERs(c))
			}
		}
		return st.write(ans)
	case syncproto.LocalIn:
		if err := s.reg.syncLocalEndpoints(st.node, e.Endpoints); err != nil {
			s.log.Warn("control: agent endpoints refused", "node", st.node, "err", err)
			st.write(&wire.Message{Type: wire.TypeError, Error: "local endpoints: " + err.Error()})
		}
	default:
		st.count(e)
	}
	return nil
}

// sendLoop waits for the subscription, sends the first update (snapshot or
// delta since the subscriber's version), then a delta after every commit.
func (st *stream) sendLoop(ctx context.Context) error {
	var sub syncproto.Subscribed
	select {
	case <-ctx.Done():
		return nil
	case sub = <-st.sub:
	}
	f, known, full := sub.Filter, sub.Known, sub.Full
	s := st.s
	for {
		watch := s.st.Watch()
		var m *wire.Message
		var err error
		if !full {
			m, err = st.delta(f, known)
			if errors.Is(err, store.ErrCompacted) {
				full = true
			} else if err != nil {
				return err
			}
		}
		if full {
			if m, err = st.snapshot(f); err != nil {
				return err
			}
			full = false
			s.cfg.Metrics.GetOrCreateCounter(`fogmesh_control_sync_snapshots_sent_total`).Inc()
		} else if m != nil {
			s.cfg.Metrics.GetOrCreateCounter(`fogmesh_control_sync_deltas_sent_total`).Inc()
		}
		if m != nil {
			if err := st.write(m); err != nil { // the machine sets its nonce
				return err
			}
			s.mUpdates.Inc()
			known = m.Version
		}
		select {
		case <-ctx.Done():
			return nil
		case <-watch:
		}
	}
}

func (st *stream) snapshot(f syncproto.Filter) (*wire.Message, error) {
	objs, rev, err := st.s.reg.list("")
	if err != nil {
		return nil, err
	}
	m := &wire.Message{Type: wire.TypeUpdate, Full: true, Version: rev, StoreID: st.s.st.ID()}
	for _, o := range objs {
		if !f.Match(o) {
			continue
		}
		r, err := wire.NewResource(o)
		if err != nil {
			return nil, err
		}
		m.Resources = append(m.Resources, r)
	}
	return m, nil
}

// delta returns nil if nothing the subscriber wants changed after known.
func (st *stream) delta(f syncproto.Filter, known uint64) (*wire.Message, error) {
	changes, rev, err := st.s.st.ChangesSince(known)
	if err != nil {
		return nil, err
	}
	if len(changes) == 0 {
		return nil, nil
	}
	m := &wire.Message{Type: wire.TypeUpdate, Version: rev, StoreID: st.s.st.ID()}
	for _, ch := range changes {
		kind, name, _ := strings.Cut(ch.Key, "/")
		if !f.Wants(kind) {
			continue
		}
		if ch.Deleted {
			m.Removed = append(m.Removed, wire.ResourceRef{Type: kind, Name: name})
			continue
		}
		o, err := decodeKV(store.KV{Key: ch.Key, Rev: ch.Rev, Value: ch.Value})
		if err != nil {
			return nil, err
		}
		if !f.Match(o) {
			// Out of scope now; it may have been in scope before.
			m.Removed = append(m.Removed, wire.RefOf(o))
			continue
		}
		r, err := wire.NewResource(o)
		if err != nil {
			return nil, err
		}
		m.Resources = append(m.Resources, r)
	}
	// Even an update with nothing in it moves the subscriber's version, so
	// that its next resync starts from here.
	return m, nil
}
