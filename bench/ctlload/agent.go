package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/syncproto"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// simAgent is one simulated agent: what internal/agent does on the wire
// (hello with its node, subscribe from what it holds, an empty local
// endpoint list, acks of every update, heartbeats), driven by the agent's
// own state machine (internal/syncproto.Agent), without the data plane.
type simAgent struct {
	i    int
	node *api.Node
	tls  *tls.Config // nil in insecure mode
	tr   *tracker
	addr *atomic.Pointer[string] // the control plane's current sync address

	sm    *syncproto.Agent
	known syncproto.Known
	scope *wire.Scope // nil: everything

	// verify: what the agent holds, "Kind/name" -> version, and protocol
	// faults seen (a resource twice in one update, a version going back).
	verify bool
	mu     sync.Mutex
	objs   map[string]uint64
	faults []string
}

// run keeps a stream open until ctx ends, reconnecting after a failure
// with full jitter: the k-th retry in a row waits uniform [0, jitter·2^k),
// at most 15 s. gate bounds how many agents make their first connection
// (until its first update is applied) at once; reconnections are not gated.
func (a *simAgent) run(ctx context.Context, jitter time.Duration, gate chan struct{}) {
	a.sm = syncproto.NewAgent()
	a.sm.SetScope(a.scope)
	first := true
	for k := 0; ctx.Err() == nil; {
		var release func()
		if first {
			select {
			case gate <- struct{}{}:
			case <-ctx.Done():
				return
			}
			var once sync.Once
			release = func() { once.Do(func() { <-gate }) }
		} else {
			release = func() {}
		}
		subscribed, _ := a.once(ctx, release)
		release()
		first = false
		if ctx.Err() != nil {
			return
		}
		if subscribed {
			k = 0
		}
		d := min(jitter<<min(k, 10), 15*time.Second)
		k++
		select {
		case <-ctx.Done():
			return
		case <-time.After(rand.N(d + 1)):
		}
	}
}

// once runs one stream; subscribed tells whether it got as far as the
// subscribe (so the next failure starts the backoff afresh). firstFn is
// called once the stream's first update is applied (or at once if there
// is nothing to send), so that the gate of run bounds how many snapshots
// are in flight during the first connections.
func (a *simAgent) once(ctx context.Context, firstFn func()) (subscribed bool, err error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	c, err := d.DialContext(ctx, "tcp", *a.addr.Load())
	if err != nil {
		return false, err
	}
	caps := []string{wire.CapPolicy2}
	if a.tls != nil {
		tc := tls.Client(c, a.tls)
		hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			c.Close()
			return false, fmt.Errorf("TLS handshake: %w", err)
		}
		c, caps = tc, []string{wire.CapTrust, wire.CapPolicy2}
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { cancel(); c.Close(); wg.Wait() }()
	wg.Add(1)
	go func() { defer wg.Done(); <-ctx.Done(); c.Close() }()

	var mu sync.Mutex // serialises steps and their writes
	flush := func(out syncproto.Output) ([]syncproto.Effect, error) {
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
		return flush(a.sm.Step(ev))
	}
	mu.Lock()
	_, err = flush(a.sm.Connect(a.node, caps, a.known))
	rt := a.sm.ReadTimeout()
	mu.Unlock()
	if err != nil {
		return false, fmt.Errorf("hello: %w", err)
	}
	r := wire.NewReader(c)
	c.SetReadDeadline(time.Now().Add(rt))
	welcome, err := r.Read()
	if err != nil {
		return false, fmt.Errorf("welcome: %w", err)
	}
	effs, err := step(syncproto.Recv{Msg: welcome})
	if err != nil {
		return false, err
	}
	var conn syncproto.Connected
	for _, e := range effs {
		if e, ok := e.(syncproto.Connected); ok {
			conn = e
		}
	}
	known := a.known.Version
	if a.sm.ResyncFull() {
		known = 0
	}
	a.tr.subscribed(a.i, welcome.Version, known, time.Now())
	if known >= welcome.Version {
		firstFn() // nothing to receive
	}
	if _, err := step(syncproto.Local{}); err != nil { // an agent without local workloads
		return true, err
	}
	mu.Lock()
	rt = a.sm.ReadTimeout()
	mu.Unlock()

	wg.Add(1)
	go func() { // heartbeats
		defer wg.Done()
		defer cancel()
		// Spread the first beat so thousands of agents do not tick together.
		t := time.NewTimer(rand.N(conn.Heartbeat) + 1)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if _, err := step(syncproto.Tick{}); err != nil {
				return
			}
			t.Reset(conn.Heartbeat)
		}
	}()

	for {
		c.SetReadDeadline(time.Now().Add(rt))
		m, err := r.Read()
		if err != nil {
			return true, fmt.Errorf("read: %w", err)
		}
		effs, err := step(syncproto.Recv{Msg: m})
		for _, e := range effs {
			if ap, ok := e.(syncproto.Apply); ok {
				aerr := a.apply(ap.Msg)
				if _, err := step(syncproto.Applied{Err: aerr}); err != nil {
					return true, err
				}
				firstFn()
			}
		}
		if err != nil {
			return true, err
		}
	}
}

// apply takes an update in: the version it moves to and, when verifying,
// the objects it holds.
func (a *simAgent) apply(m *wire.Message) error {
	if m.StoreID == "" {
		return errors.New("update without store ID")
	}
	if a.verify {
		a.mu.Lock()
		if m.Full {
			a.objs = make(map[string]uint64, len(m.Resources))
		}
		seen := make(map[string]bool, len(m.Resources)+len(m.Removed))
		for _, r := range m.Resources {
			k := r.Type + "/" + r.Name
			if seen[k] {
				a.faults = append(a.faults, fmt.Sprintf("update %d: %s twice", m.Version, k))
			}
			seen[k] = true
			if old, ok := a.objs[k]; ok && old > r.Version {
				a.faults = append(a.faults, fmt.Sprintf("update %d: %s goes back from %d to %d", m.Version, k, old, r.Version))
			}
			a.objs[k] = r.Version
		}
		for _, r := range m.Removed {
			k := r.Type + "/" + r.Name
			if seen[k] {
				a.faults = append(a.faults, fmt.Sprintf("update %d: %s updated and removed", m.Version, k))
			}
			delete(a.objs, k)
		}
		a.mu.Unlock()
	}
	a.known = syncproto.Known{StoreID: m.StoreID, Version: m.Version}
	a.tr.applied(a.i, m.Version, time.Now())
	return nil
}

// clientTLS issues a node certificate for site/node straight from the
// control plane's CA (as an operator's `fogmesh ca` would), and returns
// the TLS client configuration an agent uses on the sync port.
func clientTLS(ca *identity.CA, site, node string) (*tls.Config, error) {
	src, err := ca.NodeSource(site, node)
	if err != nil {
		return nil, fmt.Errorf("sign node %s: %w", node, err)
	}
	return src.ClientConfig(identity.AuthorizeID(identity.ControlID(ca.TrustDomain())), identity.ALPNSync), nil
}
