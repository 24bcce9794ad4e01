package control

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/audit"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/store"
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
				conn = tc
			}
			if err := s.serveStream(ctx, conn, peer); err != nil {
				s.log.Info("control: sync stream ended", "remote", c.RemoteAddr(), "err", err)
			}
		}()
	}
}

// stream is one agent's sync connection.
type stream struct {
	s    *Server
	c    net.Conn
	node string

	wmu sync.Mutex // serialises writes

	subOnce sync.Once
	sub     chan *wire.Message // the first subscribe, handed to the sender
	nonce   uint64             // sender only
}

func (st *stream) write(m *wire.Message) error {
	st.wmu.Lock()
	defer st.wmu.Unlock()
	st.c.SetWriteDeadline(time.Now().Add(30 * time.Second))
	return wire.Write(st.c, m)
}

// serveStream runs one agent connection: hello, then a reader loop for
// acks/heartbeats/local endpoints and a sender for updates.
//
// peer is the TLS client's node identity (zero in insecure mode): the hello
// must name that node and site.
func (s *Server) serveStream(ctx context.Context, c net.Conn, peer spiffeid.ID) error {
	st := &stream{s: s, c: c, sub: make(chan *wire.Message, 1)}
	r := wire.NewReader(c)
	// Every message, heartbeats included, must arrive within readTimeout, so a
	// silent or slow sender is dropped.
	readTimeout := max(3*s.cfg.HeartbeatInterval, 2*time.Second) // as the agent's (agent/sync.go)
	c.SetReadDeadline(time.Now().Add(readTimeout))
	hello, err := r.Read()
	if err != nil {
		s.mBadFrames.Inc()
		return fmt.Errorf("read hello: %w", err)
	}
	if hello.Type != wire.TypeHello || hello.Node == nil {
		s.mBadFrames.Inc()
		st.write(&wire.Message{Type: wire.TypeError, Error: "first message must be hello with a node"})
		return errors.New("no hello")
	}
	if hello.Protocol != wire.ProtocolVersion {
		st.write(&wire.Message{Type: wire.TypeError, Error: fmt.Sprintf("protocol %d not supported (want %d)", hello.Protocol, wire.ProtocolVersion)})
		return fmt.Errorf("protocol %d", hello.Protocol)
	}
	if !slices.Contains(hello.Capabilities, wire.CapPolicy2) {
		// An older agent would drop the fields that narrow routes and
		// policies (a mesh-wide DENY, a route without default) and enforce
		// wider rules than the documents say: refuse it rather than widen.
		s.mOldAgents.Inc()
		st.write(&wire.Message{Type: wire.TypeError, Error: "agent too old for this control plane: upgrade it (it keeps serving from its cache meanwhile)"})
		return errors.New("agent without capability " + wire.CapPolicy2)
	}
	if err := hello.Node.Validate(); err != nil {
		st.write(&wire.Message{Type: wire.TypeError, Error: "node: " + err.Error()})
		return fmt.Errorf("hello node: %w", err)
	}
	st.node = hello.Node.Meta.Name
	if !peer.IsZero() {
		site, node, _ := identity.ParseNodeID(peer)
		if node != st.node || site != hello.Node.Spec.Site {
			s.sec.tlsFailure(identity.ReasonUnauthorized)
			st.write(&wire.Message{Type: wire.TypeError, Error: fmt.Sprintf("certificate is for node %s of site %s, hello names %s of site %s", node, site, st.node, hello.Node.Spec.Site)})
			return fmt.Errorf("hello node %s does not match certificate %s", st.node, peer)
		}
		if s.sec.revoked(st.node) {
			st.write(&wire.Message{Type: wire.TypeError, Error: "node " + st.node + " is revoked"})
			return fmt.Errorf("node %s is revoked", st.node)
		}
		if err := s.checkNodeSite(st.node, site); err != nil {
			s.sec.tlsFailure(identity.ReasonUnauthorized)
			st.write(&wire.Message{Type: wire.TypeError, Error: err.Error()})
			return err
		}
	}
	if err := s.reg.registerNode(hello.Node); err != nil {
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
	welcome := &wire.Message{Type: wire.TypeWelcome, Version: rev, StoreID: s.st.ID(),
		HeartbeatMillis: s.cfg.HeartbeatInterval.Milliseconds()}
	if s.sec != nil && !peer.IsZero() {
		welcome.Features = append(welcome.Features, wire.FeatureSVID)
	}
	if seq, hash, err := s.auditLast(st.node); err == nil {
		welcome.Features, welcome.AuditSeq, welcome.AuditHash = append(welcome.Features, wire.FeatureAudit), seq, hash
	} else {
		s.log.Error("control: audit replica unusable; not taking audit records", "node", st.node, "err", err)
	}
	if err := st.write(welcome); err != nil {
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
	if s.sec != nil && slices.Contains(hello.Capabilities, wire.CapTrust) {
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
		switch m.Type {
		case wire.TypeSubscribe:
			first := false
			st.subOnce.Do(func() { first = true; st.sub <- m })
			if !first {
				return fmt.Errorf("node %s: second subscribe on one stream", st.node)
			}
		case wire.TypeAck:
			s.mu.Lock()
			s.liveLocked(st.node).acked = m.Version
			s.mu.Unlock()
		case wire.TypeNack:
			s.log.Warn("control: agent rejected update", "node", st.node, "version", m.Version, "nonce", m.Nonce, "err", m.Error)
		case wire.TypeHeartbeat:
			s.heartbeat(st.node, m.Load, validLoads(m.EndpointLoad))
			// Answer, so the agent can tell a silent link from a quiet one,
			// with the load the other agents put on each endpoint.
			if err := st.write(&wire.Message{Type: wire.TypeHeartbeat, EndpointLoad: s.othersLoad(st.node)}); err != nil {
				return err
			}
		case wire.TypeSessions:
			objs := make([]api.Object, 0, len(m.Sessions))
			for i := range m.Sessions {
				if err := m.Sessions[i].Validate(); err != nil {
					s.log.Warn("control: agent session refused", "node", st.node, "err", err)
					continue
				}
				objs = append(objs, &m.Sessions[i])
			}
			if _, err := s.reg.apply(objs); err != nil {
				s.log.Warn("control: store sessions", "node", st.node, "err", err)
			}
		case wire.TypeAudit:
			ack := &wire.Message{Type: wire.TypeAuditAck}
			var recs []audit.Record
			recs, err = audit.DecodeBatch(m.Audit)
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
			if err := st.write(ack); err != nil {
				return err
			}
		case wire.TypeRenew:
			if err := s.renew(st, peer, m); err != nil {
				s.log.Warn("control: renewal refused", "node", st.node, "err", err)
				st.write(&wire.Message{Type: wire.TypeError, Error: "renew: " + err.Error()})
				if errors.Is(err, errRevoked) {
					return err
				}
			}
		case wire.TypeSVID:
			ans := &wire.Message{Type: wire.TypeSVIDIssued, Nonce: m.Nonce}
			certs, err := s.issueSVID(st.node, peer, m)
			if err != nil {
				s.log.Warn("control: workload SVID refused", "node", st.node, "err", err)
				ans.Error = err.Error()
			} else {
				ans.Certificates = identity.DERs(certs)
			}
			if err := st.write(ans); err != nil {
				return err
			}
		case wire.TypeLocal:
			if err := s.reg.syncLocalEndpoints(st.node, m.Endpoints); err != nil {
				s.log.Warn("control: agent endpoints refused", "node", st.node, "err", err)
				st.write(&wire.Message{Type: wire.TypeError, Error: "local endpoints: " + err.Error()})
			}
		default:
			s.mBadFrames.Inc()
			return fmt.Errorf("node %s: unexpected %s", st.node, m.Type)
		}
	}
}

// sendLoop waits for the subscription, sends the first update (snapshot or
// delta since the subscriber's version), then a delta after every commit.
func (st *stream) sendLoop(ctx context.Context) error {
	var sub *wire.Message
	select {
	case <-ctx.Done():
		return nil
	case sub = <-st.sub:
	}
	f := newFilter(sub)
	s := st.s
	known := sub.KnownVersion
	full := sub.StoreID != s.st.ID() || known == 0
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
		}
		if m != nil {
			if err := st.write(m); err != nil {
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

func (st *stream) nextNonce() string {
	st.nonce++
	return strconv.FormatUint(st.nonce, 10)
}

func (st *stream) snapshot(f filter) (*wire.Message, error) {
	objs, rev, err := st.s.reg.list("")
	if err != nil {
		return nil, err
	}
	m := &wire.Message{Type: wire.TypeUpdate, Full: true, Version: rev, Nonce: st.nextNonce(), StoreID: st.s.st.ID()}
	for _, o := range objs {
		if !f.match(o) {
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
func (st *stream) delta(f filter, known uint64) (*wire.Message, error) {
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
		if !f.types[kind] {
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
		if !f.match(o) {
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
	m.Nonce = st.nextNonce()
	return m, nil
}

var allTypes = []string{wire.ResourceNode, wire.ResourceService, wire.ResourceEndpoint, wire.ResourceRoute, wire.ResourcePolicy, wire.ResourceSession, wire.ResourceAuthorizationPolicy}

// filter is a subscription's types and scope.
type filter struct {
	types  map[string]bool
	region string
}

func newFilter(sub *wire.Message) filter {
	f := filter{types: map[string]bool{}}
	types := sub.Types
	if len(types) == 0 {
		types = allTypes
	}
	for _, t := range types {
		if slices.Contains(allTypes, t) {
			f.types[t] = true
		}
	}
	if sub.Scope != nil {
		f.region = sub.Scope.Region
	}
	return f
}

func (f filter) match(o api.Object) bool {
	if !f.types[o.GetKind()] {
		return false
	}
	if f.region == "" {
		return true
	}
	switch v := o.(type) {
	case *api.Node:
		return v.Spec.Region == f.region
	case *api.Endpoint:
		// Agent-owned endpoints carry no region; a regional subscriber gets
		// them together with their node. TODO: resolve the node's region
		// here once regional control planes exist (issue 3 only defines the
		// scope field so the protocol does not change then).
		return v.Spec.Region == "" || v.Spec.Region == f.region
	}
	return true
}

// maxLoadEntries bounds what one heartbeat may report.
const maxLoadEntries = 10000

// validLoads drops entries a buggy or hostile agent could use to skew the
// balancers of others: non-finite or negative values, over-long keys, and
// anything past maxLoadEntries.
func validLoads(in map[string]float64) map[string]float64 {
	if len(in) == 0 {
		return nil
	}
	out := make(map[string]float64, min(len(in), maxLoadEntries))
	for k, v := range in {
		if len(out) == maxLoadEntries {
			break
		}
		if len(k) > 512 || v <= 0 || math.IsInf(v, 0) || math.IsNaN(v) || v > 1e9 {
			continue
		}
		out[k] = v
	}
	return out
}
