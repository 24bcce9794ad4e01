package paths

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/fogmesh/fogmesh/internal/transport"
)

// peerAnswered reports whether err is a refusal from the peer agent
// itself (the path worked; another path would get the same answer).
func peerAnswered(err error) bool {
	return errors.Is(err, transport.ErrRefused) || errors.Is(err, transport.ErrDialFailed) || errors.Is(err, transport.ErrDenied)
}

// gaveUp reports whether the caller cancelled ctx (its client went
// away): unlike a deadline, which a path too slow for it also hits, that
// says nothing of the path.
func gaveUp(ctx context.Context) bool { return errors.Is(ctx.Err(), context.Canceled) }

// noVerdict reports whether a dial on the TCP session key that failed
// without the peer's answer says nothing of the path: the caller gave
// up, or its deadline passed while the session was up (a slow peer or
// workload).
func (m *Manager) noVerdict(ctx context.Context, key string) bool {
	return gaveUp(ctx) || ctx.Err() != nil && m.tcp.Live(key)
}

// Dial opens a stream to p for h over the best working path.
func (m *Manager) Dial(ctx context.Context, p Peer, h transport.Header) (net.Conn, error) {
	st := m.state(p)
	if m.pool == nil {
		c, err := m.tcp.Dial(ctx, directKey(p.Name), h)
		if err == nil || peerAnswered(err) {
			m.used(st, Direct)
		}
		return c, err
	}
	if c, err, done := m.dialPunched(ctx, st, h); done {
		return c, err
	}
	if c, err, done := m.dialUDPRelayed(ctx, st, h); done {
		return c, err
	}
	m.mu.Lock()
	kind := st.kind
	m.mu.Unlock()
	if kind == Direct || kind == Relayed {
		key := directKey(p.Name)
		if kind == Relayed {
			key = relayKey(p.Name)
		}
		c, err := m.tcp.Dial(ctx, key, h)
		if err == nil || peerAnswered(err) {
			m.used(st, kind) // a new session may have taken another relay
			m.maybePunch(st)
			return c, err
		}
		if m.noVerdict(ctx, key) {
			return nil, err
		}
		m.log.Info("paths: path to peer lost", "peer", p.Name, "kind", kind, "err", err)
		m.mu.Lock()
		if st.kind == kind {
			st.kind, st.lastErr = "", err.Error()
		}
		m.mu.Unlock()
	}
	c, err := m.race(ctx, st, h)
	m.maybePunch(st)
	return c, err
}

// used records that st's new streams take kind (a relayed one through the
// relay its session was opened by).
func (m *Manager) used(st *peerState, kind Kind) {
	m.mu.Lock()
	if kind == Relayed && st.punched != nil {
		// A punch was installed while this stream was opened on the
		// relay (or the peer's introduction punched one before our first
		// stream): new streams take the punched path, and the relayed
		// session (maybe a fresh one) is retired like the one before.
		upgrade := st.kind != Punched
		if upgrade {
			st.kind, st.relay, st.since = Punched, "", time.Now()
		}
		m.mu.Unlock()
		m.tcp.Retire(relayKey(st.Name))
		if upgrade {
			m.mUp.Inc()
		}
		m.mDials[kind].Inc()
		return
	}
	via := ""
	if kind == Relayed {
		via = st.viaRelay
	}
	if st.kind != kind || st.relay != via {
		st.kind, st.relay, st.since = kind, via, time.Now()
		m.log.Info("paths: path to peer", "peer", st.Name, "kind", kind, "relay", via)
	}
	m.mu.Unlock()
	m.mDials[kind].Inc()
}

type raceResult struct {
	kind Kind
	conn net.Conn
	err  error
}

// race tries the direct path (unless it failed lately) and, after
// DirectHeadStart or as soon as the direct one fails, the relay; the
// first stream opened wins. A peer's refusal ends the race: it answered.
func (m *Manager) race(ctx context.Context, st *peerState, h transport.Header) (net.Conn, error) {
	caller := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	m.mu.Lock()
	tryDirect := st.Addr != "" && time.Now().After(st.noDirUntil)
	m.mu.Unlock()
	results := make(chan raceResult, 2)
	attempt := func(kind Kind, key string) {
		c, err := m.tcp.Dial(ctx, key, h)
		results <- raceResult{kind, c, err}
	}
	pending := 0
	relayStarted := false
	startRelay := func() {
		if !relayStarted {
			relayStarted = true
			pending++
			go attempt(Relayed, relayKey(st.Name))
		}
	}
	var head <-chan time.Time
	if tryDirect {
		pending++
		go attempt(Direct, directKey(st.Name))
		t := time.NewTimer(m.cfg.DirectHeadStart)
		defer t.Stop()
		head = t.C
	} else {
		startRelay()
	}
	var errs []error
	var won net.Conn
	var winErr error
	for pending > 0 {
		select {
		case <-head:
			startRelay()
		case r := <-results:
			pending--
			switch {
			case won != nil || winErr != nil:
				// Lost the race: its stream is not needed. A relayed
				// session is not either; a direct one is the better path
				// for the next streams.
				if r.conn != nil {
					r.conn.Close()
				}
				if r.err == nil && r.kind == Relayed {
					m.tcp.Retire(relayKey(st.Name))
				}
				if r.err == nil && r.kind == Direct {
					m.used(st, Direct)
					m.tcp.Retire(relayKey(st.Name))
				}
			case r.err == nil:
				won = r.conn
				m.used(st, r.kind)
				cancel() // the other attempt is not needed
			case peerAnswered(r.err):
				winErr = r.err
				m.used(st, r.kind)
				cancel()
			default:
				errs = append(errs, fmt.Errorf("%s: %w", r.kind, r.err))
				if r.kind == Direct {
					if !m.noVerdict(caller, directKey(st.Name)) { // it failed, rather than being called off
						m.mu.Lock()
						st.noDirUntil = time.Now().Add(m.cfg.RetryAfter)
						m.mu.Unlock()
					}
					startRelay()
				}
			}
		}
	}
	if won != nil || winErr != nil {
		return won, winErr
	}
	err := fmt.Errorf("paths: no path to %s: %w", st.Name, errors.Join(errs...))
	m.mu.Lock()
	st.lastErr = err.Error()
	m.mu.Unlock()
	return nil, err
}
