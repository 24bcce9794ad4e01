package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/mqtt"
	"github.com/fogmesh/fogmesh/internal/paths"

	"github.com/fogmesh/fogmesh/internal/proxy"
	"github.com/fogmesh/fogmesh/internal/transport"
)

// maxAttempts bounds how many endpoints one connection tries. Trying another
// endpoint is safe only before any byte was sent, which is the case here: a
// connect failure means the client's bytes are still in our socket.
const maxAttempts = 3

// handleConn proxies one client connection to the nearest healthy endpoint,
// failing over to the next candidate when a connect fails.
func (a *Agent) handleConn(ctx context.Context, ap netip.AddrPort, client net.Conn) {
	v := a.view.Load()
	t, ok := v.byVIP[ap]
	var peeked []byte
	if ok && t.proto == "auto" {
		t.proto, peeked = detect(client)
		if len(peeked) > 0 && t.proto != "tcp" {
			client, peeked = a.replayDetected(client, peeked) // L7 and MQTT read from the connection
		}
	}
	var clientID string
	if ok {
		clientID = a.clientIdentity(client)
	}
	if ok && isL7(t.proto) {
		// Per-request balancing: the HTTP server owns the connection now.
		a.active.Add(1)
		tc := &taggedConn{Conn: client, target: t, clientID: clientID, done: func() { a.active.Add(-1) },
			send: a.l7.sendTimeout(t), timeouts: a.cfg.Metrics.GetOrCreateCounter(`fogmesh_agent_send_timeouts_total`)}
		if t.proto == "http" {
			a.l7.serveH1(ctx, tc) // HTTP/1.1 fast path; hands the rest to the server
			return
		}
		a.l7.serveH2Port(tc) // h2c and gRPC ports
		return
	}
	defer client.Close()
	a.active.Add(1)
	defer a.active.Add(-1)
	if !ok {
		a.m.connNoEP.Inc()
		return
	}
	sv := effectivePolicy(v.services[t.svc], "", t.port) // a port's policy (policy.go)
	if max := sv.svc.Spec.CircuitBreaker.MaxConnections; max > 0 {
		n := a.serviceCounter(sv.limitKey, "conn")
		if n.Add(1) > int64(max) {
			n.Add(-1)
			a.m.overflows.Inc()
			return
		}
		defer n.Add(-1)
	}
	// MQTT: read the CONNECT first, so the client id can pin the session
	// to one broker instance; the bytes read are replayed upstream.
	var prefix []byte
	var mqttConn mqtt.Connect
	var pinKey string
	if t.proto == "mqtt" {
		client.SetReadDeadline(time.Now().Add(10 * time.Second))
		cn, raw, err := mqtt.ReadConnect(client)
		client.SetReadDeadline(time.Time{})
		if err != nil {
			a.m.mqttBad.Inc()
			a.log.Debug("agent: bad MQTT CONNECT", "service", t.svc, "err", err)
			if b := mqtt.RefuseConnect(err); b != nil {
				client.Write(b)
			}
			return
		}
		prefix, mqttConn, pinKey = raw, cn, cn.ClientID
	} else if len(peeked) > 0 {
		prefix = peeked // auto-detected tcp: replay the bytes read, then splice
	}
	ctx = withClientIdentity(ctx, clientID)
	cands := a.pick(sv, t.port)
	if hk := sv.svc.Spec.HashKey; hk != nil && hk.SourceIP && !hk.MQTTClientID && hashBalanced(sv) {
		// Source IP asked for without the client id: it wins on mqtt too.
		if host, _, err := net.SplitHostPort(client.RemoteAddr().String()); err == nil {
			pinKey = host
		}
	}
	if pinKey != "" {
		a.hashOrder(sv, cands, pinKey)
	}
	if len(cands) == 0 {
		a.m.connNoEP.Inc()
		a.log.Debug("agent: no healthy endpoint", "service", t.svc)
		if t.proto == "mqtt" && prefix != nil {
			client.Write(mqtt.Connack(mqttConn.Version, mqtt.RefuseUnavailable))
		}
		return
	}
	for i, ev := range cands {
		if i == maxAttempts {
			break
		}
		if i > 0 {
			a.m.failovers.Inc()
		}
		var mqttCheck func(string, []string) bool
		if decidesHere(ev) && v.authz != nil { // a remote endpoint's agent decides
			d, mode := a.authorizeConn(ctx, v, sv, t.port, clientID, a.cfg.Node.Name)
			if !d.Allow {
				if t.proto == "mqtt" {
					client.Write(mqtt.Connack(mqttConn.Version, mqtt.RefuseNotAuthorized))
				}
				return
			}
			if mode == modeMQTT {
				mqttCheck = a.mqttChecker(ctx, v, sv, t.port, clientID, a.cfg.Node.Name)
				if !willAllowed(mqttConn, mqttCheck) {
					client.Write(mqtt.Connack(mqttConn.Version, mqtt.RefuseNotAuthorized))
					return
				}
			}
		}
		fast := a.fastPrepare(t, ev, t.port) // before the dial: the endpoint's end is tracked from its accept
		defer fast.release()
		dialStart := time.Now()
		up, err := a.dialStream(ctx, sv, ev, t.port, false)
		if err == nil {
			a.stats(ev.key).observe(time.Since(dialStart))
		}
		if err == nil && prefix != nil {
			if _, err = up.Write(prefix); err != nil {
				up.Close()
			}
		}
		if errors.Is(err, transport.ErrDenied) {
			a.log.Debug("agent: connection denied by the endpoint's agent", "service", t.svc, "endpoint", ev.key, "err", err)
			if t.proto == "mqtt" {
				client.Write(mqtt.Connack(mqttConn.Version, mqtt.RefuseNotAuthorized))
			}
			return // every endpoint of the service would deny it: no failover
		}
		if err != nil {
			a.m.dialFailures.Inc()
			a.dialFailed(sv, ev, err)
			a.log.Info("agent: endpoint failed, trying next", "service", t.svc, "endpoint", ev.key, "tier", ev.tier, "err", err)
			continue
		}
		a.m.connOK.Inc()
		a.connectOK(sv, ev)
		counter := a.endpointActive(ev.key)
		counter.Add(1)
		idle := time.Duration(sv.svc.Spec.Timeouts.Idle)
		if t.proto == "mqtt" && (sv.svc.Spec.MQTTInspect || mqttCheck != nil) {
			c, u := proxy.WithIdleTimeout(client, up, idle) // d <= 0: the conns themselves
			a.relayMQTT(ctx, c, u, mqttConn, t.svc, clientID, sv.svc.Spec.MQTTInspect, mqttCheck)
		} else if sidle, err := a.spliceIdle(ctx, client, up, idle, t, mqttConn); err != nil {
			up.Close() // no CONNACK: the client's connection ends with it
		} else if err := a.relayTCP(ctx, client, up, fast, len(prefix), sidle); errors.Is(err, proxy.ErrIdle) {
			a.cfg.Metrics.GetOrCreateCounter(fmt.Sprintf(`fogmesh_agent_idle_timeouts_total{service=%q}`, t.svc)).Inc()
		}
		counter.Add(-1)
		return
	}
	a.m.connFailed.Inc()
	if t.proto == "mqtt" && prefix != nil {
		client.Write(mqtt.Connack(mqttConn.Version, mqtt.RefuseUnavailable))
	}
}

// dialEndpoint is the HTTP proxy's dial: on the mesh it marks the stream
// L7 (its bytes are requests this agent writes, with the identity headers
// it sets), which the destination agent takes headers from.
func (a *Agent) dialEndpoint(ctx context.Context, sv *serviceView, ev *endpointView, port string) (net.Conn, error) {
	return a.dialStream(ctx, sv, ev, port, true)
}

// dialStream connects to an endpoint; l7 is transport.Header.L7. A
// relayed client connection (the TCP proxy) must dial with l7 false: its
// bytes are the client's, whatever they look like.
func (a *Agent) dialStream(ctx context.Context, sv *serviceView, ev *endpointView, port string, l7 bool) (net.Conn, error) {
	if ev.mesh != "" {
		return a.dialMesh(ctx, sv, ev, transport.Header{Port: port, SourceID: clientIdentityFrom(ctx), L7: l7})
	}
	addr, err := a.endpointAddr(ev.ep, port, false)
	if err != nil {
		return nil, err
	}
	dctx, cancel := context.WithTimeout(ctx, connectTimeout(sv))
	defer cancel()
	d := net.Dialer{KeepAliveConfig: keepAliveConfig(sv.svc.Spec.CircuitBreaker.TCPKeepalive)}
	return d.DialContext(dctx, "tcp", addr.String())
}

// dialMesh opens a mesh stream to a remote endpoint's agent with header
// h (this endpoint's names and this node filled in), within the
// service's connect timeout, cancelled if gossip declares the node dead
// meanwhile: that failure wraps errNodeDead, the gossip's verdict and no
// connect failure of the endpoint (dialFailed).
func (a *Agent) dialMesh(ctx context.Context, sv *serviceView, ev *endpointView, h transport.Header) (net.Conn, error) {
	ctx, release := a.watchNode(ctx, remoteNode(ev))
	defer release()
	dctx, cancel := context.WithTimeout(ctx, connectTimeout(sv))
	defer cancel()
	p, err := a.peerOf(ev)
	if err != nil {
		return nil, err
	}
	h.Namespace, h.Service, h.Endpoint, h.Source = sv.svc.Meta.Namespace, sv.svc.Meta.Name, ev.ep.Meta.Name, a.cfg.Node.Name
	c, err := a.peers.Dial(dctx, p, h)
	if err != nil && context.Cause(ctx) == errNodeDead {
		return nil, fmt.Errorf("%w (%w)", errNodeDead, err)
	}
	return c, err
}

// connectTimeout is the service's connect timeout, 3 s if it sets none.
func connectTimeout(sv *serviceView) time.Duration {
	if d := time.Duration(sv.svc.Spec.Timeouts.Connect); d > 0 {
		return d
	}
	return 3 * time.Second
}

// detect reads the client's first bytes (at most 500 ms) and names the
// protocol: http2 for the HTTP/2 preface, http for an HTTP/1.x method,
// mqtt for a CONNECT packet, tcp for anything else (or nothing). It
// returns the bytes it read.
func detect(c net.Conn) (string, []byte) {
	var buf []byte
	c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	defer c.SetReadDeadline(time.Time{})
	tmp := make([]byte, 16)
	for len(buf) < 8 {
		n, err := c.Read(tmp[:16-len(buf)])
		buf = append(buf, tmp[:n]...)
		if err != nil || (len(buf) > 0 && buf[0] == 0x10) || !couldBeHTTP(buf) {
			break // closed, timed out, MQTT CONNECT, or bytes no HTTP starts with: decided
		}
	}
	return detectBytes(buf)
}

// detectBytes names the protocol of a connection's first bytes, as detect
// describes, and returns them.
func detectBytes(buf []byte) (string, []byte) {
	switch {
	case len(buf) == 0:
		return "tcp", buf
	case buf[0] == 0x10:
		return "mqtt", buf
	case bytes.HasPrefix(buf, []byte("PRI * HT")):
		return "http2", buf
	}
	for _, m := range httpStarts[1:] {
		if bytes.HasPrefix(buf, []byte(m)) {
			return "http", buf
		}
	}
	return "tcp", buf
}

// httpStarts are the first bytes of an HTTP/2 preface and HTTP/1.x methods.
var httpStarts = []string{"PRI * HT", "GET ", "POST ", "PUT ", "HEAD ", "DELETE ", "OPTIONS ", "PATCH ", "TRACE ", "CONNECT "}

// couldBeHTTP reports whether more bytes could still make buf an HTTP start.
func couldBeHTTP(buf []byte) bool {
	for _, m := range httpStarts {
		if len(buf) < len(m) && bytes.HasPrefix([]byte(m), buf) {
			return true
		}
	}
	return false
}

// prefixConn replays bytes already read from a connection.
type prefixConn struct {
	net.Conn
	r io.Reader
}

func (c *prefixConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// CloseWrite forwards half-closes to the TCP connection.
func (c *prefixConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// recoverConn keeps a bug triggered by one connection from taking the whole
// node's agent down (net/http does the same for its handlers): the panic is
// logged with its stack, counted, and the connection closed.
func (a *Agent) recoverConn(c net.Conn) {
	if r := recover(); r != nil {
		a.m.panics.Inc()
		a.log.Error("agent: panic serving a connection", "remote", c.RemoteAddr(), "panic", r, "stack", string(debug.Stack()))
		c.Close()
	}
}

// remoteNode is the node of a remote endpoint, "" for local or static ones.
// peerOf is the agent serving a remote endpoint, for the path manager.
// In secure mode it has the node identity every path checks.
func (a *Agent) peerOf(ev *endpointView) (paths.Peer, error) {
	if p := ev.peer.Load(); p != nil {
		return *p, nil
	}
	p := paths.Peer{Name: ev.ep.Spec.Node, Addr: ev.mesh}
	if a.ident != nil {
		var err error
		if p.ID, err = identity.NodeID(a.ident.td, ev.site, p.Name); err != nil {
			return p, fmt.Errorf("node %q of site %q: no node identity: %w", p.Name, ev.site, err)
		}
	}
	ev.peer.Store(&p) // the trust domain never changes once set
	return p, nil
}

func remoteNode(ev *endpointView) string {
	if ev.local || ev.mesh == "" {
		return ""
	}
	return ev.ep.Spec.Node
}

// serviceCounter is a per-service in-flight counter for circuit breaking.
func (a *Agent) serviceCounter(svc, what string) *atomic.Int64 {
	v, _ := a.svcCounters.LoadOrStore(svc+"|"+what, new(atomic.Int64))
	return v.(*atomic.Int64)
}

// DialLocal implements transport.Dialer: a peer agent asks for one of this
// node's workloads. Anything that is not a registered local endpoint of the
// named service is refused, so the mesh port is no open proxy.
func (a *Agent) DialLocal(ctx context.Context, h transport.Header) (net.Conn, error) {
	mode, err := a.authorizeStream(ctx, h)
	if err != nil {
		return nil, err
	}
	if udp, c, err := a.dialLocalUDP(ctx, h); udp { // udpmesh.go
		return c, err
	}
	a.mu.Lock()
	ws := a.workloads[h.Endpoint]
	a.mu.Unlock()
	e, ok := a.localEndpoint(h, ws) // clusterep.go
	if !ok {
		return nil, fmt.Errorf("%w: %s/%s endpoint %s", transport.ErrUnknownDestination, h.Namespace, h.Service, h.Endpoint)
	}
	addr, err := a.endpointAddr(&e, h.Port, false)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", transport.ErrUnknownDestination, err)
	}
	var d net.Dialer
	if sv := a.view.Load().services[h.Namespace+"/"+h.Service]; sv != nil {
		d.KeepAliveConfig = keepAliveConfig(sv.svc.Spec.CircuitBreaker.TCPKeepalive) // the policy's, not a subset's
	}
	c, err := d.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		// Seen by a peer first: this is a passive failure for us too.
		ev := &endpointView{key: e.Meta.Key(), ep: &e, local: true}
		if v := a.view.Load(); v != nil && v.services[h.Namespace+"/"+h.Service] != nil {
			a.connectFailed(v.services[h.Namespace+"/"+h.Service], ev)
		} else {
			a.eject(ev)
		}
		return nil, err
	}
	a.active.Add(1)
	return &meshConn{countedConn: &countedConn{Conn: c, done: func() { a.active.Add(-1) }}, mode: mode, addr: addr.String()}, nil
}

// countedConn decrements the active count when closed. It is only used on
// the mesh side of a relay; where the other end is a TCP connection (a
// direct stream), relayBytes relays the *net.TCPConn it wraps.
type countedConn struct {
	net.Conn
	once sync.Once
	done func()
}

func (c *countedConn) Close() error {
	c.once.Do(c.done)
	return c.Conn.Close()
}

// CloseWrite forwards half-closes.
func (c *countedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
