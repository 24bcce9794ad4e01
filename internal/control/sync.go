package control

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sort"
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
	// One feed decodes and encodes each commit for every stream.
	fd, err := newFeed(s.st, s.log)
	if err != nil {
		return err
	}
	fd.measurePush(s.timing.push)
	s.reg.feedp.Store(fd)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		fd.run(ctx)
	}()
	if s.sec != nil {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.watchTrust(ctx)
		}()
	}
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
		var slot *identity.GateSlot // nil: held
		var ev *identity.Evictable
		if s.sec != nil {
			var reason string
			ev = identity.NewEvictable(c)
			if slot, reason = s.sec.gate.Enter(c.RemoteAddr(), ev.Evict); slot == nil {
				// No goroutine, no TLS work; Debug: an attack must not
				// flood the log.
				c.Close()
				s.sec.tlsFailure(reason)
				s.log.Debug("control: sync connection refused before its handshake", "remote", c.RemoteAddr(), "reason", reason)
				continue
			}
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
			// Two calls from this small frame: what stays below an agent
			// stream's reader for its whole life is small, so its stack,
			// grown by the handshake, shrinks back (a stack is halved only
			// while under a quarter of it is in use; one per agent).
			conn, peer, agent := s.handshakeSync(ctx, c, slot, ev)
			if !agent {
				return
			}
			if err := s.serveStream(ctx, conn, peer); err != nil {
				s.log.Info("control: sync stream ended", "remote", c.RemoteAddr(), "err", err)
			}
		}()
	}
}

// handshakeSync runs the TLS handshake of an accepted sync connection (in
// secure mode) and serves the protocols that are not an agent's stream
// (join, region, relay); agent is true when the connection is an agent
// stream, for serveStream. slot is c's handshake slot (security.gate),
// released once the handshake has finished or failed, or for a join (whose
// peer has no certificate) once the join is served; a join pins it once its
// token checks out. ev is c's gate entry's Evictable: a handshake or join
// the gate evicted (closed) is counted as identity.ReasonEvicted, and a
// connection whose slot was evicted is not served even if its handshake
// finished.
func (s *Server) handshakeSync(ctx context.Context, c net.Conn, slot *identity.GateSlot, ev *identity.Evictable) (conn net.Conn, peer spiffeid.ID, agent bool) {
	if s.sec == nil {
		return c, peer, true
	}
	tc, err := identity.ServerHandshake(ctx, c, s.sec.syncTLS, s.cfg.SyncHandshakeTimeout)
	join := err == nil && tc.ConnectionState().NegotiatedProtocol == identity.ALPNJoin
	if held := join || slot.Release(); !held { // evicted, maybe as it finished: its cancel closes c now or soon
		err = errors.Join(err, identity.ErrEvicted)
	}
	if err != nil {
		reason := ev.Reason(identity.HandshakeReason(err))
		if errors.Is(err, identity.ErrEvicted) {
			reason = identity.ReasonEvicted
		}
		s.sec.tlsFailure(reason)
		level := slog.LevelWarn
		if reason == identity.ReasonEvicted { // Debug: an attack must not flood the log
			level = slog.LevelDebug
		}
		s.log.Log(ctx, level, "control: sync TLS handshake refused", "remote", c.RemoteAddr(), "reason", reason, "err", err)
		return nil, peer, false
	}
	if join {
		// A joining node has no certificate: it holds its slot until its
		// join is served (at most 10 s), else anyone could hold join
		// connections without bound past their handshakes. serveJoin pins
		// it once the token checks out; until then the gate may evict it.
		err := s.sec.serveJoin(tc, slot)
		if !slot.Release() { // evicted: counted once, here, not as a refused join
			s.sec.tlsFailure(identity.ReasonEvicted)
			s.log.Debug("control: join evicted", "remote", c.RemoteAddr(), "err", err)
			return nil, peer, false
		}
		if err != nil {
			s.log.Warn("control: join refused", "remote", c.RemoteAddr(), "err", err)
		}
		return nil, peer, false
	}
	if peer, err = identity.PeerID(tc.ConnectionState()); err != nil {
		return nil, peer, false
	}
	switch tc.ConnectionState().NegotiatedProtocol {
	case identity.ALPNRegion:
		if err := s.serveRegionTrust(ctx, tc, peer); err != nil {
			s.log.Info("control: region stream ended", "remote", c.RemoteAddr(), "region", peer.String(), "err", err)
		}
		return nil, peer, false
	case identity.ALPNRegionSync:
		if err := s.serveRegionSync(ctx, c, tc, peer); err != nil {
			s.log.Info("control: region link ended", "remote", c.RemoteAddr(), "region", peer.String(), "err", err)
		}
		return nil, peer, false
	case identity.ALPNRelay:
		if err := s.serveRelay(ctx, tc, peer); err != nil {
			s.log.Info("control: relay stream ended", "remote", c.RemoteAddr(), "relay", peer.String(), "err", err)
		}
		return nil, peer, false
	}
	return tc, peer, true
}

// streamReadBuffer is the read buffer of an agent's stream.
const streamReadBuffer = 512

// stream is one agent's sync connection: the I/O around the protocol's
// state machine (internal/syncproto.Control), which says what each frame
// means and what may be sent when.
type stream struct {
	s      *Server
	c      net.Conn
	node   string
	region string // its node's

	welcome uint64 // the store revision the welcome named

	mu sync.Mutex // serialises the machine's steps and the writes of their frames
	sm *syncproto.Control

	// The sender (sender.go) has no goroutine of its own while it has
	// nothing to send: it is kicked by what gives it work and a goroutine
	// runs only while it sends. snd guards its bookkeeping and what the
	// reader hands it (the subscription, later subscribes).
	snd sender

	// trust: the agent takes trust messages; the sender sends them (now
	// and after every change) besides updates.
	trust bool
}

// maxPendingAdds bounds the later subscribes a stream may have waiting for
// their answer; an agent that sends more is dropped.
const maxPendingAdds = 64

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
//
// The admission (openStream) returns before the loop (runStream) starts,
// so its large frame is not under the reader for the stream's life.
func (s *Server) serveStream(ctx context.Context, c net.Conn, peer spiffeid.ID) error {
	st, r, err := s.openStream(ctx, c, peer)
	if st == nil {
		return err
	}
	defer s.closeStream(st)
	return s.runStream(ctx, st, r, peer)
}

// openStream reads the hello, admits the agent and welcomes it. A nil
// stream means the connection is done: refused, or a regional control
// plane's, served here.
func (s *Server) openStream(ctx context.Context, c net.Conn, peer spiffeid.ID) (*stream, *wire.Reader, error) {
	var pn *syncproto.PeerNode
	if !peer.IsZero() {
		site, node, _ := identity.ParseNodeID(peer)
		pn = &syncproto.PeerNode{Site: site, Node: node}
	}
	st := &stream{s: s, c: c, sm: syncproto.NewControl(pn, s.cfg.HeartbeatInterval)}
	// A small read buffer: agents' frames are mostly heartbeats and acks,
	// longer ones are read past it, and there is one per agent.
	r := wire.NewReaderSize(c, streamReadBuffer)
	// Every message, heartbeats included, must arrive within the machine's
	// read timeout, so a silent or slow sender is dropped; the hello, the
	// first frame after a TLS handshake, within the handshake's bound too
	// (a slow link's).
	wait := st.sm.ReadTimeout()
	if s.sec != nil {
		wait = max(wait, s.cfg.SyncHandshakeTimeout)
	}
	c.SetReadDeadline(time.Now().Add(wait))
	hello, err := r.Read()
	if err != nil {
		s.mBadFrames.Inc()
		return nil, nil, fmt.Errorf("read hello: %w", err)
	}
	if slices.Contains(hello.Capabilities, wire.CapRegion) {
		return nil, nil, s.serveRegion(ctx, c, r, hello, peer) // downstream.go
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
		return nil, nil, err
	}
	st.node = admit.Node.Meta.Name
	if err := s.admitRegion(admit.Node); err != nil { // export.go
		_, err = st.step(syncproto.Reject{Reason: err.Error(), Err: err})
		return nil, nil, err
	}
	if pn != nil {
		reject := func(reason string, err error) error {
			_, err = st.step(syncproto.Reject{Reason: reason, Err: err})
			return err
		}
		if s.sec.revoked(st.node) {
			return nil, nil, reject("node "+st.node+" is revoked", fmt.Errorf("node %s is revoked", st.node))
		}
		if _, err := s.checkNodeSite(st.node, pn.Site); err != nil {
			s.sec.tlsFailure(identity.ReasonUnauthorized)
			return nil, nil, reject(err.Error(), err)
		}
		// The node's region is its certificate's regional CA's, else
		// bound, unless its cluster labels place it (noderegion.go).
		if err := s.checkNodeRegion(c, st.node, admit.Node.Spec.Region); err != nil {
			return nil, nil, reject(err.Error(), err)
		}
	}
	s.topology(admit.Node, pn != nil)
	st.region = admit.Node.Spec.Region // where the labels place it, if they do
	if err := s.reg.registerNode(admit.Node); errors.Is(err, store.ErrUnavailable) || errors.Is(err, store.ErrWrite) {
		// etcd down or without quorum, or the store cannot write (a full
		// disk, etcd out of space): serve the agent what the store last
		// showed; its registration is written when it reconnects.
		s.log.Warn("control: store unavailable; agent served without recording its registration", "node", st.node, "err", err)
	} else if err != nil {
		err = fmt.Errorf("register node %s: %w", st.node, err)
		reason := err.Error()
		if errors.Is(err, ErrOwned) {
			// A node that moved here from the plane that holds its
			// record (joined again at this region's plane): its old
			// record goes first.
			reason += fmt.Sprintf(" (if the node moved here from that control plane, delete its record there: fogmesh delete node %s)", st.node)
		}
		_, err = st.step(syncproto.Reject{Reason: reason, Err: err})
		return nil, nil, err
	}
	s.mu.Lock()
	s.streams[c] = st.node // c may be the TLS conn over the accepted one: closing either ends both
	l := s.liveLocked(st.node)
	l.conns++
	l.lastHeartbeat = time.Now()
	s.mu.Unlock()
	s.log.Info("control: agent connected", "node", st.node, "remote", c.RemoteAddr())
	rev, _ := s.st.Rev()
	st.welcome = rev
	welcome := syncproto.Admitted{Version: rev, StoreID: s.st.ID(), Features: []string{wire.FeatureScopeAdd, wire.FeatureStats}}
	if s.sec != nil && !peer.IsZero() {
		welcome.Features = append(welcome.Features, wire.FeatureSVID, wire.FeatureSVIDBatch)
	}
	if seq, hash, err := s.auditLast(st.node); err == nil {
		welcome.Features, welcome.AuditSeq, welcome.AuditHash = append(welcome.Features, wire.FeatureAudit), seq, hash
	} else {
		s.log.Error("control: audit replica unusable; not taking audit records", "node", st.node, "err", err)
	}
	if _, err := st.step(welcome); err != nil {
		s.closeStream(st)
		return nil, nil, err
	}
	st.trust = s.sec != nil && admit.Trust
	return st, r, nil
}

// closeStream undoes openStream's bookkeeping of an admitted stream.
func (s *Server) closeStream(st *stream) {
	s.mu.Lock()
	l := s.live[st.node]
	l.conns--
	last := l.conns == 0
	delete(s.streams, st.c)
	s.mu.Unlock()
	if last {
		s.liveEnded(st.node)
	}
}

// runStream runs an admitted stream: the sender, and the reader loop here.
func (s *Server) runStream(ctx context.Context, st *stream, r *wire.Reader, peer spiffeid.ID) error {
	c := st.c
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st.startSender(ctx)
	defer func() { cancel(); c.Close(); st.stopSender() }()

	readTimeout := st.sm.ReadTimeout()
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
		if err := st.received(m, peer); err != nil {
			return err
		}
	}
}

// received steps the machine with a frame read and carries out its
// effects (out of runStream's loop, so the reader's stack stays small
// while it waits).
func (st *stream) received(m *wire.Message, peer spiffeid.ID) error {
	effs, err := st.step(syncproto.Recv{Msg: m})
	for _, e := range effs {
		if err := st.do(e, peer); err != nil {
			return err
		}
	}
	return err
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
		st.snd.mu.Lock()
		st.snd.subscription = &e // the machine allows one subscribe per stream
		st.snd.mu.Unlock()
		st.kick()
	case syncproto.ScopeAdd:
		st.snd.mu.Lock()
		n := len(e.Services)
		for _, p := range st.snd.pending {
			n += len(p)
		}
		full := len(st.snd.pending) >= maxPendingAdds || n > syncproto.MaxScopeServices
		if !full {
			st.snd.pending = append(st.snd.pending, e.Services)
		}
		st.snd.mu.Unlock()
		if full {
			return fmt.Errorf("node %s: more than %d scope additions or %d entries waiting", st.node, maxPendingAdds, syncproto.MaxScopeServices)
		}
		st.kick()
	case syncproto.Acked:
		s.mu.Lock()
		s.liveLocked(st.node).acked = e.Version
		s.mu.Unlock()
	case syncproto.Nacked:
		s.log.Warn("control: agent rejected update", "node", st.node, "version", e.Version, "nonce", e.Nonce, "err", e.Error)
	case syncproto.Heartbeat:
		s.heartbeat(st.node, e.Load, e.EndpointLoad, e.Paths, e.VIPBindFailures)
		if e.Stats != nil && !s.stats.note(st.node, e.Stats, time.Now()) {
			s.mBadFrames.Inc()
			s.log.Debug("control: heartbeat stats over their bounds ignored", "node", st.node, "rows", len(e.Stats.Rows), "bounds", len(e.Stats.Bounds))
		}
		// Answer, so the agent can tell a silent link from a quiet one,
		// with the load the other agents put on each endpoint.
		return st.write(&wire.Message{Type: wire.TypeHeartbeat, EndpointLoad: s.othersLoad(st.node)})
	case syncproto.SessionsIn:
		for _, err := range e.Refused {
			s.log.Warn("control: agent session refused", "node", st.node, "err", err)
		}
		objs, dropped := s.reg.agentSessions(e.Valid)
		if dropped > 0 {
			s.reg.mSessionsDropped.Add(dropped)
			s.log.Warn("control: agent sessions of services without session affinity dropped", "node", st.node, "dropped", dropped)
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

// emptyEvery is how often a scoped stream with nothing in scope still gets
// an empty update that moves its version, so that the version it acks (the
// control plane's view of how current it is) stays near the store's;
// unscoped streams get one at every commit, as before scoping. Not more
// often: at 10,000 scoped agents every 2 s was 5,000 frames/s of nothing.
const emptyEvery = 10 * time.Second

// update is an update to send with the encoding of each item (Resources,
// then Removed), made once by the feed: the stream only frames it.
type update struct {
	m   *wire.Message
	enc [][]byte // of m.Resources
	rem [][]byte // of m.Removed
}

func (u *update) addRes(e *feedEntry) {
	u.m.Resources = append(u.m.Resources, e.res)
	u.enc = append(u.enc, e.enc)
}

func (u *update) addRemoved(e *feedEntry) {
	u.m.Removed = append(u.m.Removed, e.ref)
	u.rem = append(u.rem, e.refEnc)
}

// answerAdds answers the later subscribes waiting, each at once, even when
// nothing enters: the agent holds a DNS query until it knows.
func (st *stream) answerAdds(ss *sendState) error {
	st.snd.mu.Lock()
	adds := st.snd.pending
	st.snd.pending = nil
	st.snd.mu.Unlock()
	for _, add := range adds {
		u := ss.widen(ss.fd, add, ss.scanned)
		if err := st.writeUpdate(u); err != nil {
			return err
		}
		st.s.mUpdates.Inc()
		st.s.mDeltas.Inc()
		ss.lastSent, ss.told = time.Now(), u.m.Version
	}
	return nil
}

// widen adds the entries of a later subscribe to a scoped stream's filter
// and returns its answer: what enters the scope, at the feed's state, and
// ScopeAdded naming the valid entries asked for (all of them are held
// once it is applied). Its version is rev, what the stream's deltas
// covered: the next delta from rev sends again what changed since, which
// is at most the state sent here. A stream without scope holds everything
// already: its answer only names the entries.
func (ss *sendState) widen(fd *feed, entries []string, rev uint64) *update {
	u := ss.newUpdate(rev, false)
	for _, k := range entries {
		if syncproto.ScopeEntry(k) && len(u.m.ScopeAdded) < syncproto.MaxScopeServices {
			u.m.ScopeAdded = append(u.m.ScopeAdded, k)
		}
	}
	if !ss.f.Scoped() || ss.refs == nil {
		return u
	}
	nf, added := ss.f.Widen(entries)
	if len(added) == 0 {
		return u
	}
	// Register first, so a commit to them from now on wakes the stream.
	ss.f = nf
	fd.widen(ss.sub, nf, added)
	entering, _ := fd.scopedSnapshot(syncproto.NewFilter(&wire.Message{Scope: &wire.Scope{Services: added}}), ss.self)
	sort.Slice(entering, func(i, j int) bool { return entering[i].key < entering[j].key })
	if ss.gate != nil {
		ss.gate.learn(entering)
	}
	var nodes []string
	for _, e := range entering {
		if e.svc == "" || ss.held.has(e.key) || !ss.f.Wants(e.ref.Type) || !ss.f.Match(e.obj) || ss.gate != nil && !ss.gate.in(e) {
			continue // nodes and authorization policies: held already, or below
		}
		if e.ref.Type == api.KindEndpoint {
			if entered, _ := ss.refs.Endpoint(e.ref.Name, e.node); entered != "" {
				nodes = append(nodes, entered)
			}
		}
		ss.held.add(e.key)
		u.addRes(e)
	}
	for _, n := range nodes {
		key := api.KindNode + "/" + n
		if e := fd.get(key); e != nil && !e.deleted && !ss.held.has(key) && ss.f.Match(e.obj) {
			ss.held.add(key)
			u.addRes(e)
		}
	}
	fd.holdNodes(ss.sub, nodes, nil)
	return u
}

// startSending registers the subscription with the feed, whose commits
// then kick the sender; it sends once the feed holds what the welcome
// named (sender.step).
func (st *stream) startSending(sub *syncproto.Subscribed) *sendState {
	s := st.s
	fd := s.reg.feed()
	ss := newSendState(sub.Filter, st.node, s.st.ID())
	ss.fd, ss.scanned, ss.full = fd, sub.Known, sub.Full
	if s.cfg.Mode == ModeGlobal {
		// An agent of the global plane sees other regions as its
		// region's control plane would (agentview.go).
		ss.gate = newAgentGate(st.region, st.node, fd)
	}
	if ss.f.Scoped() {
		// What a scoped subscriber holds from an earlier stream is not
		// known here (which nodes, what left its scope meanwhile): it
		// gets its scope again, which is small by design.
		ss.full = true
	}
	if !ss.full {
		if cur, err := s.st.Rev(); err == nil && ss.scanned > cur {
			ss.full = true // a subscriber from another history
		}
	}
	if !ss.full && sub.Known > 0 {
		// The subscriber holds version Known of this store: that is its
		// acknowledgement. One that is current gets no update to ack, and
		// the acked version lives in memory only, so without this every
		// node would show CONFIG VERSION 0 after a restart of this plane
		// until the next change.
		s.mu.Lock()
		s.liveLocked(st.node).acked = sub.Known
		s.mu.Unlock()
	}
	// Register before the first look, so no commit after it is missed.
	ss.sub = fd.subscribeNotify(ss.f, st.kick)
	return ss
}

// sendOnce sends what the subscriber lacks, if anything; again says to
// look once more at once.
func (st *stream) sendOnce(ss *sendState) (again bool, err error) {
	s, fd := st.s, ss.fd
	var u *update
	if !ss.full {
		entries, rev, ok := fd.since(ss.scanned)
		if !ok {
			entries, rev, err = fd.resume(ss.scanned)
			if errors.Is(err, store.ErrCompacted) {
				ss.full = true
			} else if err != nil {
				return false, err
			}
		}
		if !ss.full && rev > ss.scanned {
			u = ss.delta(fd, entries, rev)
			ss.scanned = rev
		}
	}
	if ss.full {
		u = ss.snapshot(fd, st.welcome)
		ss.scanned, ss.full = u.m.Version, false
	}
	if u == nil && ss.told < ss.scanned && time.Since(ss.lastSent) >= emptyEvery {
		u = ss.newUpdate(ss.scanned, false) // the version a scoped subscriber was not told
	}
	if u != nil && (len(u.enc)+len(u.rem) > 0 || !ss.f.Scoped() || time.Since(ss.lastSent) >= emptyEvery) {
		if err := st.writeUpdate(u); err != nil { // the machine sets its nonce
			return false, err
		}
		s.mUpdates.Inc()
		if u.m.Full {
			s.mSnapshots.Inc()
		} else {
			s.mDeltas.Inc()
		}
		ss.lastSent, ss.told = time.Now(), u.m.Version
	}
	fd.served(ss.sub, ss.scanned) // written, or nothing of it to send
	// A shared snapshot may be older than the feed (reused for up to a
	// second), and the commits after it woke no one before this stream
	// subscribed: look again now.
	cur, _ := fd.watch()
	return cur > ss.scanned, nil
}

// sendState is what one stream's sender knows of its subscriber: for a
// scoped subscription, the keys it holds and the nodes its endpoints need.
type sendState struct {
	f       syncproto.Filter
	storeID string
	all     bool   // the filter selects everything: snapshots are shared whole
	held    keySet // scoped: store keys the subscriber holds
	refs    *syncproto.NodeRefs
	self    string
	sub     *feedSub   // this stream's registration with the feed
	gate    *agentGate // at the global plane: the region rule (nil: none)

	// The sender's progress.
	fd       *feed
	scanned  uint64    // the version the subscriber holds, as sent
	full     bool      // the next update must be a snapshot
	lastSent time.Time // of the last update
	told     uint64    // the version the subscriber was last sent
}

// keySet is a set of store keys. A map of empty values: its slots are a
// third smaller than a map[string]bool's (16 bytes, not 24), and every
// scoped stream holds one with its scope's keys (a few hundred each, the
// largest part of a stream's heap at 10,000 agents).
type keySet map[string]struct{}

func (k keySet) has(key string) bool { _, ok := k[key]; return ok }
func (k keySet) add(key string)      { k[key] = struct{}{} }

func newSendState(f syncproto.Filter, self, storeID string) *sendState {
	return &sendState{f: f, storeID: storeID, all: f.All(), self: self}
}

func (ss *sendState) newUpdate(rev uint64, full bool) *update {
	return &update{m: &wire.Message{Type: wire.TypeUpdate, Full: full, Version: rev, StoreID: ss.storeID}}
}

// snapshot is the first update of a subscriber that holds nothing usable.
func (ss *sendState) snapshot(fd *feed, minRev uint64) *update {
	if ss.f.Scoped() {
		entries, rev := fd.scopedSnapshot(ss.f, ss.self)
		u := ss.newUpdate(rev, true)
		ss.held, ss.refs = keySet{}, syncproto.NewNodeRefs(ss.self)
		if ss.gate != nil {
			ss.gate.reset(entries)
		}
		var nodes []*feedEntry
		for _, e := range entries {
			if e.ref.Type == api.KindNode {
				nodes = append(nodes, e)
				continue
			}
			if !ss.f.Wants(e.ref.Type) || !ss.f.Match(e.obj) || ss.gate != nil && !ss.gate.in(e) {
				continue
			}
			if e.ref.Type == api.KindEndpoint {
				ss.refs.Endpoint(e.ref.Name, e.node)
			}
			ss.held.add(e.key)
			u.addRes(e)
		}
		for _, e := range nodes {
			if ss.refs.Wants(e.ref.Name) && ss.f.Match(e.obj) {
				ss.held.add(e.key)
				u.addRes(e)
			}
		}
		// The nodes it needs, held or not yet stored, wake it when they
		// change.
		fd.holdNodes(ss.sub, ss.refs.Nodes(), nil)
		return u
	}
	snap := fd.snapshot(minRev)
	if ss.gate != nil {
		if !ss.all || snap.foreign {
			ss.gate.reset(snap.entries)
			return ss.gatedSnapshot(snap)
		}
		ss.gate.reset(nil) // nothing of a region: everything is in
	}
	if ss.all {
		return snap.whole(ss.storeID)
	}
	u := ss.newUpdate(snap.rev, true)
	for _, e := range snap.entries {
		if ss.f.Match(e.obj) {
			u.addRes(e)
		}
	}
	return u
}

// whole is the snapshot for a subscriber that selects everything, built
// once and shared; each stream copies only the message header.
func (s *feedSnap) whole(storeID string) *update {
	s.once.Do(func() {
		u := &update{m: &wire.Message{Type: wire.TypeUpdate, Full: true, Version: s.rev, StoreID: storeID}}
		u.m.Resources = make([]wire.Resource, 0, len(s.entries))
		u.enc = make([][]byte, 0, len(s.entries))
		for _, e := range s.entries {
			u.addRes(e)
		}
		s.shared = u
	})
	m := *s.shared.m
	return &update{m: &m, enc: s.shared.enc}
}

// delta is what changed after the subscriber's version, up to rev.
func (ss *sendState) delta(fd *feed, entries []*feedEntry, rev uint64) *update {
	if !ss.f.Scoped() && ss.gate != nil {
		return ss.gatedDelta(fd, entries, rev)
	}
	u := ss.newUpdate(rev, false)
	if !ss.f.Scoped() {
		for _, e := range entries {
			if !ss.f.Wants(e.ref.Type) {
				continue
			}
			if e.deleted || !ss.f.Match(e.obj) {
				// Out of scope now; it may have been in scope before.
				u.addRemoved(e)
				continue
			}
			u.addRes(e)
		}
		return u
	}
	touched := map[string]*feedEntry{} // nodes to decide on, with their entry in this delta if any
	if ss.gate != nil {
		if more := ss.gate.swept(fd, entries); len(more) > 0 {
			entries = append(entries[:len(entries):len(entries)], more...) // the feed's slice is shared
		}
	}
	for _, e := range entries {
		if !ss.f.Wants(e.ref.Type) {
			continue
		}
		if e.ref.Type == api.KindNode {
			touched[e.ref.Name] = e
			continue
		}
		in := !e.deleted && ss.f.Match(e.obj) && (ss.gate == nil || ss.gate.in(e))
		if e.ref.Type == api.KindEndpoint {
			node := ""
			if in {
				node = e.node
			}
			entered, left := ss.refs.Endpoint(e.ref.Name, node)
			for _, n := range []string{entered, left} {
				if _, ok := touched[n]; n != "" && !ok {
					touched[n] = nil
				}
			}
		}
		switch {
		case in:
			ss.held.add(e.key)
			u.addRes(e)
		case ss.held.has(e.key):
			delete(ss.held, e.key)
			u.addRemoved(e)
		}
	}
	names := make([]string, 0, len(touched))
	for n := range touched {
		names = append(names, n)
	}
	sort.Strings(names)
	var add, drop []string
	defer func() {
		if len(add)+len(drop) > 0 {
			fd.holdNodes(ss.sub, add, drop)
		}
	}()
	for _, n := range names {
		e, inDelta := touched[n], touched[n] != nil
		if !inDelta {
			e = fd.get(api.KindNode + "/" + n)
		}
		want := e != nil && !e.deleted && ss.refs.Wants(n) && ss.f.Match(e.obj)
		key := api.KindNode + "/" + n
		if ss.refs.Wants(n) {
			add = append(add, n)
		} else {
			drop = append(drop, n)
		}
		switch {
		case want && (inDelta || !ss.held.has(key)):
			ss.held.add(key)
			u.addRes(e)
		case !want && ss.held.has(key):
			delete(ss.held, key)
			if e == nil {
				e = &feedEntry{ref: wire.ResourceRef{Type: api.KindNode, Name: n}}
				e.refEnc, _ = json.Marshal(e.ref)
			}
			u.addRemoved(e)
		}
	}
	return u
}

// writeUpdate feeds u to the machine (which sets the nonce and splits it in
// chunks) and writes the frames from the items' encodings, so that no
// resource is encoded again per stream.
func (st *stream) writeUpdate(u *update) error {
	items := append(u.enc[:len(u.enc):len(u.enc)], u.rem...)
	sizes := make([]int, len(items))
	for i, b := range items {
		sizes[i] = len(b)
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	out := st.sm.Step(syncproto.Send{Msg: u.m, Sizes: sizes})
	nres, nrem := len(u.m.Resources), len(u.m.Removed)
	ri, di := 0, 0
	for _, fr := range out.Send {
		var buf []byte
		if fr.Type == wire.TypeUpdate {
			nr, nd := len(fr.Resources), len(fr.Removed)
			// The machine's chunks are consecutive shares of Resources,
			// then Removed; check, and encode plainly if not.
			if ri+nr <= nres && di+nd <= nrem && (nr == 0 || fr.Resources[0].ResourceRef == u.m.Resources[ri].ResourceRef) &&
				(nd == 0 || fr.Removed[0] == u.m.Removed[di]) {
				buf = encodeUpdateFrame(fr, items[ri:ri+nr], items[nres+di:nres+di+nd])
				ri, di = ri+nr, di+nd
			}
		}
		st.c.SetWriteDeadline(time.Now().Add(30 * time.Second))
		var n int
		var err error
		if buf == nil {
			n, err = wire.WriteFrame(st.c, fr)
		} else if n = len(buf) - 4; n > wire.MaxFrame {
			err = wire.ErrFrameTooLarge
		} else {
			_, err = st.c.Write(buf)
		}
		if err != nil && out.Err == nil {
			return err
		}
		st.s.noteFrame(fr, n)
	}
	return out.Err
}

// encodeUpdateFrame returns the frame (length prefix and body) of update
// fr whose resources and removed refs are already encoded: the header is
// encoded, the items are spliced in.
func encodeUpdateFrame(fr *wire.Message, res, rem [][]byte) []byte {
	h := *fr
	h.Resources, h.Removed = nil, nil
	hb, err := json.Marshal(&h)
	if err != nil || len(hb) < 2 {
		return nil
	}
	size := 4 + len(hb) + 32
	for _, b := range res {
		size += len(b) + 1
	}
	for _, b := range rem {
		size += len(b) + 1
	}
	buf := make([]byte, 4, size)
	buf = append(buf, hb[:len(hb)-1]...) // without its '}'
	list := func(name string, items [][]byte) {
		if len(items) == 0 {
			return
		}
		buf = append(buf, `,"`...)
		buf = append(buf, name...)
		buf = append(buf, `":[`...)
		for i, b := range items {
			if i > 0 {
				buf = append(buf, ',')
			}
			buf = append(buf, b...)
		}
		buf = append(buf, ']')
	}
	list("resources", res)
	list("removed", rem)
	buf = append(buf, '}')
	binary.BigEndian.PutUint32(buf, uint32(len(buf)-4))
	return buf
}
