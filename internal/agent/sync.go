package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/syncproto"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// syncLoop keeps a sync stream to a control plane open, retrying with
// jittered exponential backoff. While no control plane answers, the agent
// serves from what it has.
func (a *Agent) syncLoop(ctx context.Context) {
	if len(a.cfg.Control) == 0 {
		a.log.Info("agent: no control plane configured; serving local workloads and cache only")
		return
	}
	sm := syncproto.NewAgent() // lives across streams: a NACK makes the next one resync in full
	sm.SetWelcomeTimeout(time.Duration(a.cfg.ControlHandshakeTimeout))
	backoff := 250 * time.Millisecond
	for i := 0; ctx.Err() == nil; i++ {
		addr := a.cfg.Control[i%len(a.cfg.Control)]
		start := time.Now()
		err := a.syncOnce(ctx, addr, sm)
		a.connected.Store(false)
		if ctx.Err() != nil {
			return
		}
		if a.scope.rescope.Swap(false) {
			// Ended to subscribe with another scope (scope.go): again, to
			// the same control plane, at once.
			a.log.Info("agent: resubscribing with a new scope", "control", addr)
			i--
			continue
		}
		if time.Since(start) > 30*time.Second {
			backoff = 250 * time.Millisecond // it was a good session
		}
		a.log.Warn("agent: control plane stream ended, retrying", "control", addr, "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff/2 + rand.N(backoff/2+1)):
		}
		backoff = min(backoff*2, 15*time.Second)
	}
}

// syncOnce runs one stream: the I/O around the protocol's state machine
// (internal/syncproto.Agent), which says what to send and what each frame
// received means: hello, subscribe from the cached version, send local
// endpoints, then apply updates and heartbeat until the stream fails.
func (a *Agent) syncOnce(ctx context.Context, addr string, sm *syncproto.Agent) error {
	c, err := a.dialControl(ctx, addr)
	if err != nil {
		return err
	}
	var caps []string
	if a.ident != nil {
		cfg := a.ident.src.ClientConfig(identity.AuthorizeID(identity.ControlID(a.ident.td)), identity.ALPNSync)
		tc := tls.Client(c, cfg)
		hctx, hcancel := context.WithTimeout(ctx, time.Duration(a.cfg.ControlHandshakeTimeout))
		err := tc.HandshakeContext(hctx)
		hcancel()
		if err != nil {
			c.Close()
			return fmt.Errorf("TLS handshake (%s): %w", identity.HandshakeReason(err), err)
		}
		c, caps = tc, []string{wire.CapTrust}
	}
	caps = append(caps, wire.CapPolicy2, wire.CapChunks)
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { cancel(); c.Close(); wg.Wait() }()
	go func() { <-ctx.Done(); c.Close() }()

	var mu sync.Mutex // serialises the machine's steps and the writes of their frames
	// flushLocked writes a step's frames; when the step ends the stream,
	// best effort (a NACK), returning the step's error.
	flushLocked := func(out syncproto.Output) ([]syncproto.Effect, error) {
		for _, m := range out.Send {
			c.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if err := wire.Write(c, m); err != nil && out.Err == nil {
				return out.Effects, err
			}
		}
		return out.Effects, out.Err
	}
	step := func(ev syncproto.Event) ([]syncproto.Effect, error) {
		mu.Lock()
		defer mu.Unlock()
		return flushLocked(sm.Step(ev))
	}
	// write sends a request of another part of the agent (renew, audit, svid).
	write := func(m *wire.Message) error {
		_, err := step(syncproto.Send{Msg: m})
		return err
	}

	a.mu.Lock()
	known := syncproto.Known{StoreID: a.storeID, Version: a.cfgVersion}
	a.mu.Unlock()
	subscribeFrom := known.Version // for the log
	if sm.ResyncFull() {
		subscribeFrom = 0
	}
	scope := a.scope.connectScope()
	sm.SetScope(scope)
	mu.Lock()
	_, err = flushLocked(sm.Connect(a.self, caps, known))
	readTimeout := sm.ReadTimeout()
	mu.Unlock()
	if err != nil {
		return fmt.Errorf("hello: %w", err)
	}
	r := wire.NewReader(c)
	c.SetReadDeadline(time.Now().Add(readTimeout))
	welcome, err := r.Read()
	if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
		mu.Lock()
		next := sm.WelcomeTimedOut()
		mu.Unlock()
		return fmt.Errorf("welcome: none within %s (controlHandshakeTimeout; the next stream waits %s): %w", readTimeout, next, err)
	}
	if err != nil {
		return fmt.Errorf("welcome: %w", err)
	}
	effs, err := step(syncproto.Recv{Msg: welcome})
	if err != nil {
		return err
	}
	var conn syncproto.Connected
	for _, e := range effs {
		if e, ok := e.(syncproto.Connected); ok {
			conn = e
		}
	}
	if a.svidIssuer != nil && conn.SVID {
		a.svidIssuer.connected(write, conn.SVIDBatch)
		defer a.svidIssuer.connected(nil, false)
	}
	mu.Lock()
	readTimeout = sm.ReadTimeout()
	mu.Unlock()
	a.mu.Lock()
	local := a.localEndpointsLocked()
	a.mu.Unlock()
	if _, err := step(syncproto.Local{Endpoints: local}); err != nil {
		return err
	}
	if ss := a.takePendingSessions(); len(ss) > 0 { // decided while offline
		if _, err := step(syncproto.Sessions{Sessions: ss}); err != nil {
			a.returnPendingSessions(ss)
			return err
		}
	}
	a.connected.Store(true)
	a.log.Info("agent: connected to control plane", "control", addr, "knownVersion", subscribeFrom)

	auditAcks := make(chan *wire.Message, 1)
	if conn.Audit != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.shipAudit(ctx, conn.Audit.Seq, conn.Audit.Hash, write, auditAcks); err != nil {
				a.log.Warn("agent: audit shipping failed, reconnecting", "err", err)
				cancel()
			}
		}()
	}

	// Sender: heartbeats and local endpoint changes.
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer cancel()
		t := time.NewTicker(conn.Heartbeat)
		defer t.Stop()
		var stats *statSender // this stream's view of the golden counters sent
		if conn.Stats {
			stats = &statSender{}
		}
		// renew fires when the node certificate is due for renewal (never
		// in insecure mode); while no answer comes it fires every 5s.
		renew := time.NewTimer(time.Hour)
		defer renew.Stop()
		if a.ident == nil {
			renew.Stop()
		} else {
			renew.Reset(max(time.Until(a.renewAt()), 0))
		}
		for {
			var ev syncproto.Event
			select {
			case <-ctx.Done():
				return
			case <-renew.C:
				if d := time.Until(a.renewAt()); d > 0 {
					renew.Reset(d)
					continue
				}
				renew.Reset(5 * time.Second)
				m, err := a.renewMessage()
				if err != nil {
					a.log.Error("agent: renewal request", "err", err)
					continue
				}
				ev = syncproto.Send{Msg: m}
			case <-t.C:
				tick := syncproto.Tick{Load: float64(a.active.Load()), EndpointLoad: a.ownLoads(), Paths: a.pathReports(),
					VIPBindFailures: a.VIPBindFailures()}
				if stats != nil {
					tick.Stats = a.goldenRows.report(stats)
				}
				ev = tick
			case <-a.localChanged:
				a.mu.Lock()
				ev = syncproto.Local{Endpoints: a.localEndpointsLocked()}
				a.mu.Unlock()
			case <-a.scope.ask:
				keys, resubscribe := a.scope.take(scope != nil)
				if resubscribe {
					a.scope.rescope.Store(true)
					return
				}
				if len(keys) == 0 {
					continue
				}
				ev = syncproto.Widen{Services: keys}
			case <-a.sessionsChanged:
				ss := a.takePendingSessions()
				if len(ss) == 0 {
					continue
				}
				if _, err := step(syncproto.Sessions{Sessions: ss}); err != nil {
					a.returnPendingSessions(ss)
					return
				}
				continue
			}
			if _, err := step(ev); err != nil {
				if errors.Is(err, syncproto.ErrRescope) {
					a.scope.rescope.Store(true)
				}
				return
			}
		}
	}()

	for {
		c.SetReadDeadline(time.Now().Add(readTimeout))
		m, err := r.Read()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, io.EOF) {
				return fmt.Errorf("stream closed: %w", err)
			}
			return fmt.Errorf("read: %w", err)
		}
		effs, err := step(syncproto.Recv{Msg: m})
		for _, e := range effs {
			if err := a.doSyncEffect(e, step, auditAcks, scope != nil); err != nil {
				return err
			}
		}
		if err != nil {
			return err
		}
	}
}

// doSyncEffect carries out what a frame from the control plane asks for;
// scoped tells whether the stream subscribed with a scope.
func (a *Agent) doSyncEffect(e syncproto.Effect, step func(syncproto.Event) ([]syncproto.Effect, error), auditAcks chan<- *wire.Message, scoped bool) error {
	switch e := e.(type) {
	case syncproto.Apply:
		if a.observeUpdate != nil {
			a.observeUpdate(e.Msg)
		}
		err := a.applyUpdate(e.Msg)
		if err != nil {
			a.m.nacks.Inc()
			a.log.Error("agent: rejected update", "version", e.Msg.Version, "err", err)
		} else {
			a.scope.answer(e.Answered, e.Msg.Full && !scoped)
		}
		_, err = step(syncproto.Applied{Err: err}) // ack, or nack and end the stream
		return err
	case syncproto.PeerLoads:
		a.setPeerLoads(e.EndpointLoad)
	case syncproto.AuditAck:
		select { // the machine lets one batch be in flight, so there is room
		case auditAcks <- e.Msg:
		default:
			return errors.New("unexpected auditAck")
		}
	case syncproto.TrustUpdate:
		if a.ident == nil {
			return nil
		}
		if err := a.applyTrust(e.Trust, true); err != nil {
			a.log.Error("agent: trust update refused", "err", err)
		}
	case syncproto.SVIDIssued:
		if a.svidIssuer != nil {
			a.svidIssuer.answer(e.Msg)
		}
	case syncproto.CertIssued:
		if a.ident == nil {
			return nil
		}
		if err := a.applyCert(e.Msg); err != nil {
			a.log.Error("agent: renewed certificate refused", "err", err)
		}
	case syncproto.Refused:
		a.log.Error("agent: control plane refused", "err", e.Reason)
	}
	return nil
}

// applyUpdate applies a snapshot or delta, saves the cache, rebuilds the
// view and reconciles listeners. Nothing changes if the update is invalid.
//
// Only applyUpdate replaces a.res (serialised by applyMu), and resources are
// never modified in place, so the new configuration is built and saved
// without a.mu: a slow fsync (an SD card) must not stall mesh dials, health
// updates and requests that take a.mu.
func (a *Agent) applyUpdate(m *wire.Message) error {
	a.applyMu.Lock()
	defer a.applyMu.Unlock()
	a.mu.Lock()
	cur, storeID := a.res, a.storeID
	a.mu.Unlock()
	next, err := cur.applyUpdate(m)
	if err != nil {
		return err
	}
	if m.StoreID != "" {
		storeID = m.StoreID
	}
	cfg, err := next.toConfig(storeID, m.Version)
	if err == nil {
		err = saveConfig(a.cachePath, cfg)
	}
	if err != nil {
		// Serving the new configuration without a cache would make an
		// offline restart go back in time; refuse it instead.
		return fmt.Errorf("save cache: %w", err)
	}
	a.mu.Lock()
	var gone []string // nodes that left: their paths and state go too
	for name := range a.res.nodes {
		if next.nodes[name] == nil {
			gone = append(gone, name)
		}
	}
	a.res, a.storeID, a.cfgVersion = next, storeID, m.Version
	a.rebuildLocked()
	a.mu.Unlock()
	for _, name := range gone {
		a.peers.Forget(name)
	}
	a.m.updates.Inc()
	a.l7.pruneTransports(a.view.Load())
	a.joinSitePeers()
	for _, name := range gone {
		a.forgetNode(name) // after joinSitePeers: gossip's later word on it is not kept
	}
	a.log.Debug("agent: applied update", "version", m.Version, "full", m.Full,
		"resources", len(m.Resources), "removed", len(m.Removed))
	return nil
}
