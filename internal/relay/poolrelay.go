package relay

// The pool's per-relay machinery: choosing home, keeping each relay
// connected, measuring RTT.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"
)

// changedLocked wakes the waiters of the current state.
func (p *Pool) changedLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// pickHomeLocked re-chooses the home relay: a lost home is replaced by the
// connected relay of least smoothed RTT; a connected home gives way only
// to one below Hysteresis times its RTT.
func (p *Pool) pickHomeLocked() {
	var best *poolRelay
	for _, r := range p.relays {
		if r.client == nil || r.srtt == 0 {
			continue
		}
		if best == nil || r.srtt < best.srtt {
			best = r
		}
	}
	old := p.home
	switch {
	case old == nil || old.client == nil:
		p.home = best
		if old != nil && best != nil {
			p.mFail.Inc() // the home was lost and another took over
		}
	case best != nil && best != old && float64(best.srtt) < p.cfg.Hysteresis*float64(old.srtt):
		p.home = best
	}
}

// runRelay keeps one relay connected until the pool closes: connect,
// ping and watch, and after a loss wait a backoff and connect again.
func (p *Pool) runRelay(r *poolRelay) {
	defer p.wg.Done()
	backoff := p.cfg.MinBackoff
	for {
		up := p.serveRelay(r)
		if p.ctx.Err() != nil {
			return
		}
		if up >= backoff {
			// It was up for a while: a loss starts over from the
			// smallest backoff; a relay that accepts and drops at once
			// keeps backing off.
			backoff = p.cfg.MinBackoff
		}
		// ±20% jitter, so agents that lost a relay together do not come
		// back in step.
		d := time.Duration(float64(backoff) * (0.8 + 0.4*rand.Float64()))
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-p.ctx.Done():
			t.Stop()
			return
		}
		backoff = min(2*backoff, p.cfg.MaxBackoff)
	}
}

// serveRelay connects to r once and serves the connection until it is
// lost or the pool closes; it returns how long the relay was connected.
// Why it ended is recorded in r, with the loss, in one step, so whoever
// sees the relay lost also sees why.
func (p *Pool) serveRelay(r *poolRelay) time.Duration {
	up, err := p.connectAndServe(r)
	p.mu.Lock()
	defer p.mu.Unlock()
	if r.client != nil {
		r.client = nil
		r.since = time.Now()
		p.pickHomeLocked()
	}
	if p.ctx.Err() == nil {
		r.failures++
		r.lastErr = err
	}
	p.changedLocked()
	return up
}

// connectAndServe is serveRelay's body: it returns how long r was
// connected and why the attempt or the connection ended.
func (p *Pool) connectAndServe(r *poolRelay) (time.Duration, error) {
	dctx, cancel := context.WithTimeout(p.ctx, p.cfg.DialTimeout)
	c, err := DialClientVia(dctx, r.addr, p.cfg.TLS, p.cfg.Dial)
	cancel()
	if err != nil {
		return 0, err
	}
	var fwd sync.WaitGroup
	defer fwd.Wait()
	defer c.Close() // ends forwardIncoming
	// The first ping measures the RTT before the relay may become home.
	rtt, err := p.ping(c)
	if err != nil {
		return 0, err
	}
	p.mu.Lock()
	cands := p.cands
	p.mu.Unlock()
	if cands != nil {
		if err := c.SetCandidates(cands); err != nil {
			return 0, err
		}
	}
	c.SetUDPOptions(p.cfg.UDP)
	fwd.Add(1)
	go p.forwardIncoming(&fwd, c)
	start := time.Now()
	p.mu.Lock()
	r.client = c
	r.since = start
	r.connects++
	r.lastErr = nil
	r.sample(rtt)
	p.pickHomeLocked()
	p.changedLocked()
	p.mu.Unlock()
	r.mConn.Inc()

	t := time.NewTicker(p.cfg.KeepAlive)
	defer t.Stop()
	for {
		select {
		case <-p.ctx.Done():
			return time.Since(start), p.ctx.Err()
		case <-c.Done():
			if err := c.Err(); err != nil {
				return time.Since(start), fmt.Errorf("relay %s: connection lost: %w", r.addr, err)
			}
			return time.Since(start), fmt.Errorf("relay %s: connection closed", r.addr)
		case <-t.C:
			rtt, err := p.ping(c)
			if err != nil {
				return time.Since(start), err
			}
			p.mu.Lock()
			r.sample(rtt)
			p.pickHomeLocked()
			p.changedLocked()
			p.mu.Unlock()
		}
	}
}

// forwardIncoming moves c's incoming sessions and introductions to the
// pool's channels until c's connection ends.
func (p *Pool) forwardIncoming(wg *sync.WaitGroup, c *Client) {
	defer wg.Done()
	for {
		select {
		case <-c.Done():
			return
		case in := <-c.Incoming():
			select {
			case p.in <- PoolIncoming{Incoming: in, Relay: c.Addr(), c: c}:
			default:
				p.mDrop.Inc()
			}
		case m := <-c.Introductions():
			select {
			case p.intro <- PoolIntroduced{Introduced: m, Relay: c.Addr()}:
			default:
			}
		case in := <-c.UDPIncoming():
			select {
			case p.udpIn <- PoolUDPIncoming{UDPIncoming: in, Relay: c.Addr()}:
			default:
				p.mDrop.Inc() // the relay closes it; the binder's WaitPeer fails
			}
		}
	}
}

// ping measures one RTT within PingTimeout.
func (p *Pool) ping(c *Client) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(p.ctx, p.cfg.PingTimeout)
	defer cancel()
	rtt, err := c.Ping(ctx)
	if err != nil {
		return 0, fmt.Errorf("relay %s: ping: %w", c.Addr(), err)
	}
	return max(rtt, time.Nanosecond), nil // zero means "not measured"
}

// sample adds one RTT measurement.
func (r *poolRelay) sample(rtt time.Duration) {
	r.rtt = rtt
	if r.srtt == 0 {
		r.srtt = rtt
		return
	}
	r.srtt = (7*r.srtt + rtt) / 8
}
