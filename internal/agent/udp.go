package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/fogmesh/fogmesh/internal/capture"
	"github.com/fogmesh/fogmesh/internal/udpframe"
)

// UDP service ports (protocol udp). The agent binds a UDP socket on the
// service's VIP:port (this file) and proxies each client flow (client
// address and port) on its own (udpflow.go): the first datagram of a flow
// picks an endpoint as a TCP connection would (pick: balancer, locality
// tiers, outlier ejection; authorization where this agent decides), and
// the flow's datagrams go there, to a local or static endpoint over a
// connected UDP socket, to a remote one over one mesh stream per flow
// (transport.Header.UDP, datagrams framed by package udpframe), which the
// destination agent relays to its workload over UDP (udpmesh.go). Replies
// go back to the client from the VIP:port. A flow ends after
// timeouts.idle without a datagram either way (default 60s).
//
// Everything is bounded and nothing blocks the VIP socket's reader:
// UDPConfig.MaxFlows per VIP port, a queue per flow (datagrams and
// bytes), datagrams over UDPConfig.MaxDatagram; what does not fit is
// dropped and counted.
//
// Metrics (side: "source" at the VIP, "destination" at the endpoint's
// agent; dir: "up" client to workload, "down" workload to client):
//
//	fogmesh_udp_flows_active{side}
//	fogmesh_udp_flows_total{side,result}     ok, no_endpoint, dial_failed, denied, circuit_breaker
//	fogmesh_udp_datagrams_total{side,dir}
//	fogmesh_udp_bytes_total{side,dir}
//	fogmesh_udp_drops_total{side,reason}     flow_limit, queue_full, oversize, no_flow, send_error
//	fogmesh_udp_idle_timeouts_total{side}
//	fogmesh_udp_repins_total                 flows moved to another endpoint

// UDPConfig bounds the proxying of udp service ports. Zero values take
// the defaults in comments.
type UDPConfig struct {
	// MaxFlows is how many client flows one VIP port proxies at once
	// (default 1024); datagrams of further clients are dropped until a
	// flow ends.
	MaxFlows int `json:"maxFlows,omitempty"`
	// QueueDatagrams and QueueBytes bound the datagrams waiting to be sent
	// on one flow (default 64 and 256 KiB); beyond either, the client's
	// datagrams are dropped.
	QueueDatagrams int `json:"queueDatagrams,omitempty"`
	QueueBytes     int `json:"queueBytes,omitempty"`
	// MaxDatagram is the largest datagram proxied, in bytes (default and
	// maximum 65535); larger ones are dropped. Each flow holds a receive
	// buffer of this size.
	MaxDatagram int `json:"maxDatagram,omitempty"`
}

const (
	defaultUDPIdle        = 60 * time.Second
	defaultUDPMaxFlows    = 1024
	defaultUDPQueue       = 64
	defaultUDPQueueBytes  = 256 << 10
	udpRetryAfter         = time.Second     // a flow that could not open drops datagrams this long
	udpMaxRepins          = 3               // consecutive endpoint failures a flow survives
	udpHealthyAfter       = 5 * time.Second // an upstream up this long worked, replies or not
	udpEjectCheckInterval = time.Second
)

func (c *UDPConfig) validate() error {
	if c.MaxFlows < 0 || c.QueueDatagrams < 0 || c.QueueBytes < 0 || c.MaxDatagram < 0 {
		return errors.New("udp: limits must not be negative")
	}
	if c.MaxDatagram > udpframe.MaxLen {
		return fmt.Errorf("udp: maxDatagram %d over %d", c.MaxDatagram, udpframe.MaxLen)
	}
	return nil
}

// withDefaults is c with every zero limit set to its default.
func (c UDPConfig) withDefaults() UDPConfig {
	def := func(p *int, v int) {
		if *p == 0 {
			*p = v
		}
	}
	def(&c.MaxFlows, defaultUDPMaxFlows)
	def(&c.QueueDatagrams, defaultUDPQueue)
	def(&c.QueueBytes, defaultUDPQueueBytes)
	def(&c.MaxDatagram, udpframe.MaxLen)
	return c
}

// udpState is the agent's UDP ports, guarded by Agent.mu, and its metrics.
type udpState struct {
	ports    map[netip.AddrPort]*udpPort
	initOnce sync.Once
	m        *udpMetrics
}

// udpSide is one side's counters ("source" or "destination").
type udpSide struct {
	active                   atomic.Int64
	dgUp, dgDown, bUp, bDown *metrics.Counter
	idle                     *metrics.Counter
	results, drops           map[string]*metrics.Counter
}

type udpMetrics struct {
	src, dst udpSide
	repins   *metrics.Counter
}

func (s *udpSide) init(m *metrics.Set, side string) {
	c := func(name, labels string) *metrics.Counter {
		return m.GetOrCreateCounter(fmt.Sprintf(`fogmesh_udp_%s{side=%q%s}`, name, side, labels))
	}
	s.dgUp, s.dgDown = c("datagrams_total", `,dir="up"`), c("datagrams_total", `,dir="down"`)
	s.bUp, s.bDown = c("bytes_total", `,dir="up"`), c("bytes_total", `,dir="down"`)
	s.idle = c("idle_timeouts_total", "")
	s.results, s.drops = map[string]*metrics.Counter{}, map[string]*metrics.Counter{}
	for _, r := range []string{"ok", "no_endpoint", "dial_failed", "denied", "circuit_breaker"} {
		s.results[r] = c("flows_total", fmt.Sprintf(",result=%q", r))
	}
	for _, r := range []string{"flow_limit", "queue_full", "oversize", "no_flow", "send_error"} {
		s.drops[r] = c("drops_total", fmt.Sprintf(",reason=%q", r))
	}
	m.GetOrCreateGauge(fmt.Sprintf(`fogmesh_udp_flows_active{side=%q}`, side), func() float64 { return float64(s.active.Load()) })
}

func (s *udpSide) drop(reason string)   { s.drops[reason].Inc() }
func (s *udpSide) result(reason string) { s.results[reason].Inc() }

func (s *udpSide) up(n int)   { s.dgUp.Inc(); s.bUp.Add(n) }
func (s *udpSide) down(n int) { s.dgDown.Inc(); s.bDown.Add(n) }

// udpm returns the UDP metrics, registering them on first use.
func (a *Agent) udpm() *udpMetrics {
	a.udp.initOnce.Do(func() {
		m := &udpMetrics{repins: a.cfg.Metrics.GetOrCreateCounter(`fogmesh_udp_repins_total`)}
		m.src.init(a.cfg.Metrics, "source")
		m.dst.init(a.cfg.Metrics, "destination")
		a.udp.m = m
	})
	return a.udp.m
}

// udpPort is one VIP:port of a udp service port.
type udpPort struct {
	a      *Agent
	ap     netip.AddrPort
	conn   *net.UDPConn
	lim    UDPConfig
	ctx    context.Context
	cancel context.CancelFunc

	mu    sync.Mutex
	flows map[netip.AddrPort]*udpFlow
	// pkt, for a port of transparent capture (capture.go): conn learns
	// the address each datagram came to, and flows reply from it.
	pkt *capture.PktConn
	// served: its readLoop runs (a.mu), started once the view that knows
	// the port is published (serveListenersLocked).
	served bool
}

// reconcileUDPLocked binds a UDP socket for every udp VIP:port of v and
// closes those no longer there; a.mu is held and a.runCtx is live. Open
// flows of a port that stays are not touched.
func (a *Agent) reconcileUDPLocked(v *view) {
	if a.udp.ports == nil {
		a.udp.ports = map[netip.AddrPort]*udpPort{}
	}
	for ap, p := range a.udp.ports {
		if t, ok := v.byVIP[ap]; !ok || t.proto != "udp" {
			p.close()
			delete(a.udp.ports, ap)
		}
	}
	for ap, t := range v.byVIP {
		if t.proto != "udp" || a.udp.ports[ap] != nil {
			continue
		}
		conn, err := listenUDPVIP(a.runCtx, ap)
		if err != nil {
			a.noteBindFailLocked(ap, t, err)
			continue
		}
		a.noteBoundLocked(ap)
		p := &udpPort{a: a, ap: ap, conn: conn, lim: a.cfg.UDP.withDefaults(), flows: map[netip.AddrPort]*udpFlow{}}
		p.ctx, p.cancel = context.WithCancel(a.runCtx)
		a.udp.ports[ap] = p
		a.udpm()
	}
}

// serveUDPLocked starts reading the UDP ports reconcileUDPLocked bound,
// once their view is published: a datagram read before would open a flow
// on the view before, which does not know the port, and the flow would
// drop its client's datagrams for udpRetryAfter.
func (a *Agent) serveUDPLocked() {
	for _, p := range a.udp.ports {
		if !p.served {
			p.served = true
			a.wg.Add(1)
			go p.readLoop()
		}
	}
}

// closeUDPLocked closes every UDP port (a.mu held); their goroutines end
// on their own and are waited for by a.wg.
func (a *Agent) closeUDPLocked() {
	for ap, p := range a.udp.ports {
		p.close()
		delete(a.udp.ports, ap)
	}
}

// close stops the port's reader and ends its flows; it does not wait.
func (p *udpPort) close() {
	p.cancel()
	p.conn.Close()
}

// listenUDPVIP binds a UDP socket on a virtual IP (IPv6: IPV6_FREEBIND, as
// listenVIP), with a receive buffer for bursts.
func listenUDPVIP(ctx context.Context, ap netip.AddrPort) (*net.UDPConn, error) {
	lc := vipListenConfig(ap)
	pc, err := lc.ListenPacket(ctx, "udp", ap.String())
	if err != nil {
		return nil, err
	}
	conn := pc.(*net.UDPConn)
	conn.SetReadBuffer(4 << 20) // best effort: capped by net.core.rmem_max
	return conn, nil
}

// readLoop reads the clients' datagrams and hands each to its flow's
// queue, opening flows as needed. It never waits for a flow: a datagram
// that does not fit is dropped.
func (p *udpPort) readLoop() {
	a := p.a
	defer a.wg.Done()
	m := &a.udpm().src
	buf := make([]byte, p.lim.MaxDatagram+1) // one byte more: tells oversize
	for {
		var n int
		var client netip.AddrPort
		var local netip.Addr
		var err error
		if p.pkt != nil {
			n, client, local, err = p.pkt.ReadFromTo(buf)
		} else {
			n, client, err = p.conn.ReadFromUDPAddrPort(buf)
		}
		if err != nil {
			if errors.Is(err, net.ErrClosed) || p.ctx.Err() != nil {
				p.closeFlows()
				return
			}
			// Anything else (ENOMEM and friends): back off as acceptLoop
			// does, and keep the port alive.
			a.m.listenErrors.Inc()
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if n > p.lim.MaxDatagram {
			m.drop("oversize")
			continue
		}
		client = netip.AddrPortFrom(client.Addr().Unmap(), client.Port())
		p.mu.Lock()
		f := p.flows[client]
		if f == nil {
			if len(p.flows) >= p.lim.MaxFlows {
				p.mu.Unlock()
				m.drop("flow_limit")
				continue
			}
			f = p.newFlowLocked(client, local)
		}
		reason := f.enqueueLocked(buf[:n])
		p.mu.Unlock()
		if reason != "" {
			m.drop(reason)
		}
	}
}

// closeFlows ends every flow of a closed port.
func (p *udpPort) closeFlows() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, f := range p.flows {
		f.cancel()
	}
}

// udpClientIdentity is the identity of a local client of a UDP port: the
// workload registered at its address. A workload that declares attest
// selectors gets none over UDP: the owner of a UDP socket is not looked
// up (localid checks TCP sockets), and an address alone is what the
// selectors say is not enough.
func (a *Agent) udpClientIdentity(v *view, client netip.AddrPort) string {
	if len(v.attest[client.Addr()]) > 0 {
		return ""
	}
	return identityOf(v, client.Addr())
}

// dgramPool recycles the copies of small datagrams queued on flows.
var dgramPool = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

func getDgram(p []byte) []byte {
	if len(p) > 2048 {
		return append([]byte(nil), p...)
	}
	b := dgramPool.Get().(*[]byte)
	return append((*b)[:0], p...)
}

func putDgram(b []byte) {
	if cap(b) == 2048 {
		dgramPool.Put(&b)
	}
}
