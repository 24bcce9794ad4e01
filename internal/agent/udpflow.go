package agent

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fogmesh/fogmesh/internal/transport"
	"github.com/fogmesh/fogmesh/internal/udpframe"
)

// A flow of a udp port (udp.go): one client address, pinned to one
// endpoint. Its goroutine (run) opens the upstream, then sends the queued
// datagrams; a second one (downLoop) sends the upstream's replies to the
// client from the VIP:port.
//
// An existing flow stays on its endpoint until it is idle for the
// service's timeouts.idle, or the endpoint fails: a local or static one
// answers ICMP port unreachable (connection refused), a remote one's mesh
// stream ends, or the endpoint is ejected, turns unhealthy or leaves the
// view (checked at most once a second while the client sends). Then the
// flow is re-pinned: it picks again, as a new flow would, and carries on
// with its queue (the datagrams already sent to the failed endpoint are
// lost, as UDP may lose them). A flow whose endpoints keep failing
// (udpMaxRepins in a row, each with no reply and within udpHealthyAfter)
// or that cannot open at all (no endpoint, denied, every dial failed)
// drops the client's datagrams for udpRetryAfter, then the next datagram
// tries again as a new flow.

// udpFlow is one client flow of a udp port.
type udpFlow struct {
	p      *udpPort
	client netip.AddrPort
	local  netip.Addr // the address the client sent to (a capture port's)
	ctx    context.Context
	cancel context.CancelFunc
	// q holds the datagrams to send; qBytes their size. Guarded for
	// sending by p.mu (enqueueLocked), received by run alone.
	q      chan []byte
	qBytes atomic.Int64
	// last is when a datagram last passed either way (unix nanoseconds).
	last atomic.Int64
	// failed is the drop reason while the flow could not open (p.mu).
	failed string
	// replies counts datagrams from the current upstream.
	replies atomic.Int64
}

// newFlowLocked creates and starts the flow of client (p.mu held).
func (p *udpPort) newFlowLocked(client netip.AddrPort, local netip.Addr) *udpFlow {
	f := &udpFlow{p: p, client: client, local: local, q: make(chan []byte, p.lim.QueueDatagrams)}
	f.ctx, f.cancel = context.WithCancel(p.ctx)
	f.touch()
	p.flows[client] = f
	a := p.a
	a.udpm().src.active.Add(1)
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		defer f.end()
		f.run()
	}()
	return f
}

func (f *udpFlow) touch() { f.last.Store(time.Now().UnixNano()) }

func (f *udpFlow) idleFor() time.Duration {
	return time.Duration(time.Now().UnixNano() - f.last.Load())
}

// enqueueLocked queues a copy of d for sending, or returns the reason it
// is dropped (p.mu held, so an idle flow cannot be removed in between).
func (f *udpFlow) enqueueLocked(d []byte) string {
	if f.failed != "" {
		return f.failed
	}
	if f.qBytes.Load()+int64(len(d)) > int64(f.p.lim.QueueBytes) {
		return "queue_full"
	}
	c := getDgram(d)
	select {
	case f.q <- c:
		f.qBytes.Add(int64(len(c)))
		f.touch()
		return ""
	default:
		putDgram(c)
		return "queue_full"
	}
}

// end removes the flow from its port and drops what it still queues.
func (f *udpFlow) end() {
	f.cancel()
	p := f.p
	p.mu.Lock()
	if p.flows[f.client] == f {
		delete(p.flows, f.client)
	}
	f.failed = "no_flow" // a datagram the reader queued in between is dropped
	p.mu.Unlock()
	for {
		select {
		case d := <-f.q:
			putDgram(d)
		default:
			p.a.udpm().src.active.Add(-1)
			return
		}
	}
}

// removeIfIdle removes the flow if it has been idle for idle and its
// queue is empty, atomically with the reader's enqueue.
func (f *udpFlow) removeIfIdle(idle time.Duration) bool {
	p := f.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if f.idleFor() < idle || len(f.q) > 0 {
		return false
	}
	if p.flows[f.client] == f {
		delete(p.flows, f.client)
	}
	f.failed = "no_flow"
	return true
}

// upstream is where a flow's datagrams go: a connected UDP socket or a
// mesh stream.
type upstream interface {
	send(batch [][]byte) error
	recv(buf []byte) (int, error)
	close()
}

// run opens the flow's upstream and pumps datagrams until the flow ends.
func (f *udpFlow) run() {
	a := f.p.a
	m := &a.udpm().src
	v := a.view.Load()
	t, ok := v.byVIP[f.p.ap]
	if !ok || t.proto != "udp" || v.services[t.svc] == nil {
		f.fail("no_endpoint")
		return
	}
	sv := effectivePolicy(v.services[t.svc], "", t.port)
	release := func() {} // the flow's circuit breaker slot, given back before a failed flow waits
	if max := sv.svc.Spec.CircuitBreaker.MaxConnections; max > 0 {
		n := a.serviceCounter(sv.limitKey, "conn")
		if n.Add(1) > int64(max) {
			n.Add(-1)
			a.m.overflows.Inc()
			f.fail("circuit_breaker")
			return
		}
		var once sync.Once
		release = func() { once.Do(func() { n.Add(-1) }) }
		defer release()
	}
	idle := time.Duration(sv.svc.Spec.Timeouts.Idle)
	if idle <= 0 {
		idle = defaultUDPIdle
	}
	clientID := a.udpClientIdentity(v, f.client)
	for failures := 0; ; {
		up, ev, reason := f.open(v, sv, t.port, clientID)
		if up == nil {
			release()
			f.fail(reason)
			return
		}
		m.result("ok")
		active := a.endpointActive(ev.key)
		active.Add(1)
		f.replies.Store(0)
		start := time.Now()
		err := f.pump(up, sv, ev, idle)
		active.Add(-1)
		if err == nil || f.ctx.Err() != nil {
			return // idle, or the port closed
		}
		if f.replies.Load() > 0 || time.Since(start) > udpHealthyAfter {
			failures = 0 // the endpoint worked: a one-way flow gets no replies
		}
		if failures++; failures > udpMaxRepins {
			release()
			f.fail("no_flow")
			return
		}
		a.udpm().repins.Inc()
		a.log.Info("agent: udp flow's endpoint failed, picking again", "service", t.svc, "endpoint", ev.key, "client", f.client, "err", err)
		v = a.view.Load()
		if nsv := v.services[t.svc]; nsv != nil {
			sv = effectivePolicy(nsv, "", t.port)
		}
	}
}

// fail makes the flow drop the client's datagrams for udpRetryAfter,
// counted under reason, so a client that keeps sending does not make the
// agent pick and dial for every datagram.
func (f *udpFlow) fail(reason string) {
	m := &f.p.a.udpm().src
	if _, ok := m.results[reason]; ok {
		m.result(reason)
	}
	f.p.mu.Lock()
	f.failed = "no_flow"
	f.p.mu.Unlock()
	for {
		select {
		case d := <-f.q:
			putDgram(d)
			m.drop("no_flow")
		default:
			t := time.NewTimer(udpRetryAfter)
			defer t.Stop()
			select {
			case <-t.C:
			case <-f.ctx.Done():
			}
			return
		}
	}
}

// open picks the flow's endpoint, as a TCP connection would, and opens
// the upstream to it: the first of up to maxAttempts candidates that
// allows and answers. reason says why none did.
func (f *udpFlow) open(v *view, sv *serviceView, port, clientID string) (upstream, *endpointView, string) {
	a := f.p.a
	cands := a.pick(sv, port)
	if hk := sv.svc.Spec.HashKey; hk != nil && hk.SourceIP && hashBalanced(sv) {
		a.hashOrder(sv, cands, f.client.Addr().String())
	}
	if len(cands) == 0 {
		return nil, nil, "no_endpoint"
	}
	ctx := f.ctx
	for i, ev := range cands {
		if i == maxAttempts {
			break
		}
		if i > 0 {
			a.m.failovers.Inc()
		}
		if decidesHere(ev) && v.authz != nil {
			if d, _ := a.authorizeConn(ctx, v, sv, port, clientID, a.cfg.Node.Name); !d.Allow {
				return nil, nil, "denied"
			}
		}
		if ev.mesh == "" { // local or static: UDP to the workload
			addr, err := a.endpointAddr(ev.ep, port, true)
			if err != nil {
				continue
			}
			c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(addr))
			if err != nil {
				a.m.dialFailures.Inc()
				a.connectFailed(sv, ev)
				continue
			}
			f.pinned(sv, ev, i, len(cands))
			return &udpUpstream{c: c}, ev, ""
		}
		start := time.Now()
		s, err := a.dialUDPStream(ctx, sv, ev, port, clientID)
		if errors.Is(err, transport.ErrDenied) {
			a.log.Debug("agent: udp flow denied by the endpoint's agent", "service", sv.svc.Meta.Key(), "endpoint", ev.key, "err", err)
			return nil, nil, "denied"
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, nil, "no_flow"
			}
			a.m.dialFailures.Inc()
			a.dialFailed(sv, ev, err)
			a.log.Info("agent: endpoint failed, trying next", "service", sv.svc.Meta.Key(), "endpoint", ev.key, "proto", "udp", "err", err)
			continue
		}
		a.stats(ev.key).observe(time.Since(start))
		a.connectOK(sv, ev)
		f.pinned(sv, ev, i, len(cands))
		return &meshUpstream{s: s, r: udpframe.NewReader(s, f.p.lim.MaxDatagram)}, ev, ""
	}
	return nil, nil, "dial_failed"
}

// dialUDPStream opens a mesh stream for one flow to a remote endpoint
// (dialStream's timeouts and node watch; the header says udp).
func (a *Agent) dialUDPStream(ctx context.Context, sv *serviceView, ev *endpointView, port, sourceID string) (net.Conn, error) {
	return a.dialMesh(ctx, sv, ev, transport.Header{Port: port, SourceID: sourceID, UDP: true})
}

// errUnusable ends a pump whose endpoint was ejected, turned unhealthy
// or left the view meanwhile.
var errUnusable = errors.New("endpoint ejected, unhealthy or removed")

// stillUsable reports whether a flow's endpoint would still be picked:
// in the current view, healthy, not ejected, its node not declared dead.
func (a *Agent) stillUsable(sv *serviceView, ev *endpointView) bool {
	cur := a.view.Load().services[sv.svc.Meta.Key()]
	if cur == nil {
		return false
	}
	for _, e := range cur.endpoints {
		if e.key == ev.key {
			return e.healthy && !a.isEjected(sv, e.key) && (e.local || !a.isGossipDead(e.ep.Spec.Node))
		}
	}
	return false
}

// pump sends the queued datagrams upstream and, in downLoop, the replies
// to the client, until the flow is idle (nil), the port closes, or the
// upstream fails (its error: the caller re-pins).
func (f *udpFlow) pump(up upstream, sv *serviceView, ev *endpointView, idle time.Duration) error {
	a := f.p.a
	m := &a.udpm().src
	downErr := make(chan error, 1)
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		downErr <- f.downLoop(up, sv, ev)
	}()
	stop := func(err error) error {
		up.close()
		<-downErr
		return err
	}
	// A send blocked on a mesh stream its peer does not read stops the
	// select below: ctx closes up, and a send blocks for idle at most.
	defer context.AfterFunc(f.ctx, up.close)()
	if mu, ok := up.(*meshUpstream); ok {
		mu.idle = idle
	}
	timer := time.NewTimer(idle)
	defer timer.Stop()
	batch := make([][]byte, 0, 32)
	lastCheck := time.Now()
	for {
		select {
		case d := <-f.q:
			batch, size := append(batch[:0], d), len(d)
		drain:
			for len(batch) < cap(batch) && size < 64<<10 {
				select {
				case d := <-f.q:
					batch, size = append(batch, d), size+len(d)
				default:
					break drain
				}
			}
			f.qBytes.Add(-int64(size))
			err := up.send(batch)
			for _, d := range batch {
				if err == nil {
					m.up(len(d))
				}
				putDgram(d)
			}
			if err != nil {
				for range batch {
					m.drop("send_error")
				}
				if ev.mesh == "" {
					a.connectFailed(sv, ev)
				}
				return stop(err)
			}
			if now := time.Now(); now.Sub(lastCheck) > udpEjectCheckInterval {
				lastCheck = now
				if !a.stillUsable(sv, ev) {
					return stop(errUnusable)
				}
			}
		case err := <-downErr:
			up.close()
			if f.ctx.Err() != nil {
				return nil
			}
			return err
		case <-timer.C:
			if f.removeIfIdle(idle) {
				m.idle.Inc()
				return stop(nil)
			}
			timer.Reset(max(idle-f.idleFor(), time.Millisecond))
		case <-f.ctx.Done():
			return stop(nil)
		}
	}
}

// downLoop sends the upstream's datagrams to the client from the VIP:port
// until the upstream fails or is closed. A local or static endpoint that
// refuses (ICMP port unreachable) is a failed connect for outlier
// detection; so is a mesh stream that ends before any reply came.
func (f *udpFlow) downLoop(up upstream, sv *serviceView, ev *endpointView) error {
	a := f.p.a
	m := &a.udpm().src
	buf := make([]byte, f.p.lim.MaxDatagram+1) // one byte more: tells oversize
	for {
		n, err := up.recv(buf)
		if errors.Is(err, udpframe.ErrTooLarge) || n > f.p.lim.MaxDatagram {
			m.drop("oversize")
			continue
		}
		if err != nil {
			if f.ctx.Err() == nil && !errors.Is(err, net.ErrClosed) && (ev.mesh == "" || f.replies.Load() == 0) {
				a.connectFailed(sv, ev)
			}
			return err
		}
		if f.replies.Add(1) == 1 && ev.mesh == "" {
			a.connectOK(sv, ev)
		}
		f.touch()
		var werr error
		if f.p.pkt != nil {
			_, werr = f.p.pkt.WriteToFrom(buf[:n], f.client, f.local)
		} else {
			_, werr = f.p.conn.WriteToUDPAddrPort(buf[:n], f.client)
		}
		if werr != nil {
			m.drop("send_error")
			continue
		}
		m.down(n)
	}
}

// udpUpstream is a connected UDP socket to a local or static endpoint.
type udpUpstream struct{ c *net.UDPConn }

func (u *udpUpstream) send(batch [][]byte) error {
	for _, d := range batch {
		if _, err := u.c.Write(d); err != nil {
			return err
		}
	}
	return nil
}

func (u *udpUpstream) recv(buf []byte) (int, error) { return u.c.Read(buf) }
func (u *udpUpstream) close()                       { u.c.Close() }

// meshUpstream is a mesh stream carrying one flow's framed datagrams.
type meshUpstream struct {
	s    net.Conn
	r    *udpframe.Reader
	buf  []byte
	idle time.Duration // a send blocks this long at most (write deadline)
	dl   time.Time     // when the deadline was last moved on (every idle/4)
}

// send writes the batch as frames in one write.
func (u *meshUpstream) send(batch [][]byte) error {
	if u.idle > 0 {
		if now := time.Now(); now.Sub(u.dl) > u.idle/4 {
			u.s.SetWriteDeadline(now.Add(u.idle))
			u.dl = now
		}
	}
	u.buf = u.buf[:0]
	for _, d := range batch {
		var err error
		if u.buf, err = udpframe.Append(u.buf, d); err != nil {
			return err // cannot happen: datagrams are at most MaxDatagram
		}
	}
	_, err := u.s.Write(u.buf)
	if cap(u.buf) > 256<<10 {
		u.buf = nil
	}
	return err
}

func (u *meshUpstream) recv(buf []byte) (int, error) { return u.r.Next(buf) }
func (u *meshUpstream) close()                       { u.s.Close() }
