package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/fogmesh/fogmesh/internal/identity"
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
	backoff := 250 * time.Millisecond
	for i := 0; ctx.Err() == nil; i++ {
		addr := a.cfg.Control[i%len(a.cfg.Control)]
		start := time.Now()
		err := a.syncOnce(ctx, addr)
		a.connected.Store(false)
		if ctx.Err() != nil {
			return
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

// syncOnce runs one stream: hello, subscribe from the cached version, send
// local endpoints, then apply updates and heartbeat until the stream fails.
func (a *Agent) syncOnce(ctx context.Context, addr string) error {
	c, err := a.dialControl(ctx, addr)
	if err != nil {
		return err
	}
	var caps []string
	if a.ident != nil {
		cfg := a.ident.src.ClientConfig(identity.AuthorizeID(identity.ControlID(a.ident.td)), identity.ALPNSync)
		tc := tls.Client(c, cfg)
		hctx, hcancel := context.WithTimeout(ctx, 10*time.Second)
		err := tc.HandshakeContext(hctx)
		hcancel()
		if err != nil {
			c.Close()
			return fmt.Errorf("TLS handshake (%s): %w", identity.HandshakeReason(err), err)
		}
		c, caps = tc, []string{wire.CapTrust}
	}
	caps = append(caps, wire.CapPolicy2)
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { cancel(); c.Close(); wg.Wait() }()
	go func() { <-ctx.Done(); c.Close() }()

	var wmu sync.Mutex
	write := func(m *wire.Message) error {
		wmu.Lock()
		defer wmu.Unlock()
		c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		return wire.Write(c, m)
	}
	r := wire.NewReader(c)
	if err := write(&wire.Message{Type: wire.TypeHello, Protocol: wire.ProtocolVersion, Node: a.self, Capabilities: caps}); err != nil {
		return fmt.Errorf("hello: %w", err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	welcome, err := r.Read()
	if err != nil {
		return fmt.Errorf("welcome: %w", err)
	}
	if welcome.Type == wire.TypeError {
		return fmt.Errorf("control plane refused: %s", welcome.Error)
	}
	if welcome.Type != wire.TypeWelcome {
		return fmt.Errorf("expected welcome, got %s", welcome.Type)
	}
	shipAudit := welcomeHasAudit(welcome)
	if a.svidIssuer != nil && slices.Contains(welcome.Features, wire.FeatureSVID) {
		a.svidIssuer.connected(write)
		defer a.svidIssuer.connected(nil)
	}
	hb := time.Duration(welcome.HeartbeatMillis) * time.Millisecond
	if hb <= 0 || hb > time.Minute {
		hb = 5 * time.Second
	}
	a.mu.Lock()
	sub := &wire.Message{Type: wire.TypeSubscribe, StoreID: a.storeID, KnownVersion: a.cfgVersion}
	if a.resyncFull.Swap(false) {
		sub.KnownVersion = 0 // after a NACK: deltas built on top of it would miss its changes
	}
	local := a.localEndpointsLocked()
	a.mu.Unlock()
	if err := write(sub); err != nil {
		return err
	}
	if err := write(&wire.Message{Type: wire.TypeLocal, Endpoints: local}); err != nil {
		return err
	}
	if ss := a.takePendingSessions(); len(ss) > 0 { // decided while offline
		if err := write(&wire.Message{Type: wire.TypeSessions, Sessions: ss}); err != nil {
			a.returnPendingSessions(ss)
			return err
		}
	}
	a.connected.Store(true)
	a.log.Info("agent: connected to control plane", "control", addr, "knownVersion", sub.KnownVersion)

	auditAcks := make(chan *wire.Message, 1)
	if shipAudit {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.shipAudit(ctx, welcome.AuditSeq, welcome.AuditHash, write, auditAcks); err != nil {
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
		t := time.NewTicker(hb)
		defer t.Stop()
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
			var m *wire.Message
			select {
			case <-ctx.Done():
				return
			case <-renew.C:
				if d := time.Until(a.renewAt()); d > 0 {
					renew.Reset(d)
					continue
				}
				renew.Reset(5 * time.Second)
				var err error
				if m, err = a.renewMessage(); err != nil {
					a.log.Error("agent: renewal request", "err", err)
					continue
				}
			case <-t.C:
				m = &wire.Message{Type: wire.TypeHeartbeat, Load: float64(a.active.Load()), EndpointLoad: a.ownLoads()}
			case <-a.localChanged:
				a.mu.Lock()
				m = &wire.Message{Type: wire.TypeLocal, Endpoints: a.localEndpointsLocked()}
				a.mu.Unlock()
			case <-a.sessionsChanged:
				ss := a.takePendingSessions()
				if len(ss) == 0 {
					continue
				}
				if err := write(&wire.Message{Type: wire.TypeSessions, Sessions: ss}); err != nil {
					a.returnPendingSessions(ss)
					return
				}
				continue
			}
			if err := write(m); err != nil {
				return
			}
		}
	}()

	for {
		// The control plane answers every heartbeat, so silence for three
		// intervals (at least 2 s: a GC pause or a busy machine must not
		// cut a short interval's stream) means the link is gone even if no
		// RST ever arrives (a cut uplink); the agent then reconnects with
		// backoff.
		c.SetReadDeadline(time.Now().Add(max(3*hb, 2*time.Second)))
		m, err := r.Read()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, io.EOF) {
				return fmt.Errorf("stream closed: %w", err)
			}
			return fmt.Errorf("read: %w", err)
		}
		switch m.Type {
		case wire.TypeUpdate:
			if err := a.applyUpdate(m); err != nil {
				a.m.nacks.Inc()
				a.log.Error("agent: rejected update", "version", m.Version, "err", err)
				// The server's next delta would start after the version we
				// refused and lose its changes: NACK, then resubscribe for
				// a full snapshot. The previous configuration keeps serving.
				write(&wire.Message{Type: wire.TypeNack, Nonce: m.Nonce, Version: m.Version, Error: err.Error()})
				a.resyncFull.Store(true)
				return fmt.Errorf("rejected update %d: %w", m.Version, err)
			}
			if err := write(&wire.Message{Type: wire.TypeAck, Nonce: m.Nonce, Version: m.Version}); err != nil {
				return err
			}
		case wire.TypeHeartbeat: // the control plane's answer
			a.setPeerLoads(m.EndpointLoad)
		case wire.TypeAuditAck:
			select { // one batch in flight, so there is room
			case auditAcks <- m:
			default:
				return errors.New("unexpected auditAck")
			}
		case wire.TypeTrust:
			if a.ident == nil || m.Trust == nil {
				continue
			}
			if err := a.applyTrust(m.Trust, true); err != nil {
				a.log.Error("agent: trust update refused", "err", err)
			}
		case wire.TypeSVIDIssued:
			if a.svidIssuer != nil {
				a.svidIssuer.answer(m)
			}
		case wire.TypeCert:
			if a.ident == nil {
				continue
			}
			if err := a.applyCert(m); err != nil {
				a.log.Error("agent: renewed certificate refused", "err", err)
			}
		case wire.TypeError:
			// After hello, errors report a refused request (e.g. a local
			// endpoint name owned by another node); the stream goes on.
			a.log.Error("agent: control plane refused", "err", m.Error)
		default:
			return fmt.Errorf("unexpected %s", m.Type)
		}
	}
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
		err = saveJSON(a.cachePath, cfg)
	}
	if err != nil {
		// Serving the new configuration without a cache would make an
		// offline restart go back in time; refuse it instead.
		return fmt.Errorf("save cache: %w", err)
	}
	a.mu.Lock()
	a.res, a.storeID, a.cfgVersion = next, storeID, m.Version
	a.rebuildLocked()
	a.mu.Unlock()
	a.m.updates.Inc()
	a.reconcileListeners()
	a.l7.pruneTransports(a.view.Load())
	a.joinSitePeers()
	a.log.Debug("agent: applied update", "version", m.Version, "full", m.Full,
		"resources", len(m.Resources), "removed", len(m.Removed))
	return nil
}
