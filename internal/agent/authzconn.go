package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/fogmesh/fogmesh/internal/authz"
	"github.com/fogmesh/fogmesh/internal/proxy"
	"github.com/fogmesh/fogmesh/internal/transport"
)

// Authorization of a connection or mesh stream as it opens (TCP, MQTT,
// auto ports; authorizeConn, authorizeStream), and RelayStream, which hands
// an opened mesh stream to the byte relay, the inspecting MQTT relay or the
// per-request server (authzserver.go).

// relayBytes is the mesh server's default relay.
func relayBytes(ctx context.Context, stream, local net.Conn) {
	defer stream.Close()
	defer local.Close()
	if mc, ok := local.(*meshConn); ok {
		if tc, ok := mc.Conn.(*net.TCPConn); ok {
			// The socket itself: a direct stream (a TCP connection from
			// the peer agent) splices to it. local.Close still counts.
			proxy.Relay(ctx, stream, tc)
			return
		}
	}
	proxy.Relay(ctx, stream, local)
}

// portOf returns the service port named port, and its protocol.
func portOf(sv *serviceView, port string) (int, string) {
	for _, p := range sv.svc.Spec.Ports {
		if p.Name == port {
			return p.Port, p.Protocol
		}
	}
	return 0, ""
}

// authzMode is how a stream or connection to a selected destination is
// authorized after it is opened.
type authzMode uint8

const (
	modeNone authzMode = iota // decided once, bytes relayed
	modeHTTP                  // per request
	modeMQTT                  // per PUBLISH/SUBSCRIBE
	// modeDetect: an auto port in secure mode; decided once, and HTTP
	// (told by its first bytes) is served per request so that its source
	// identity header is vouched for (authorizeStream).
	modeDetect
)

// authorizeConn decides a new connection (a mesh stream, or a VIP
// connection to a local endpoint). It returns the decision and how the
// connection's content must be authorized from here on.
func (a *Agent) authorizeConn(ctx context.Context, v *view, sv *serviceView, port, sourceID, sourceNode string) (authz.Decision, authzMode) {
	e := v.authz
	ns, name := sv.svc.Meta.Namespace, sv.svc.Meta.Name
	if !e.Selects(ns, name) {
		return authz.Decision{Allow: true, Reason: authz.ReasonNoPolicy}, modeNone
	}
	num, proto := portOf(sv, port)
	r := authz.Request{SourceID: sourceID, SourceNode: sourceNode, Namespace: ns, Service: name, Port: port, PortNumber: num}
	switch {
	case isL7(proto):
		return authz.Decision{Allow: true, Reason: "decided per request"}, modeHTTP
	case proto == "mqtt" && e.MQTTRules(ns, name):
		r.Proto, r.MQTT = authz.MQTT, authz.MQTTConnect
		d := a.decide(ctx, e, &r)
		return d, modeMQTT
	}
	return a.decide(ctx, e, &r), modeNone
}

// mqttChecker returns the function the inspecting relay asks for the will
// topic and each PUBLISH and SUBSCRIBE, or nil when no topic rule applies.
// It decides on the policies in force at each packet, not at connect.
func (a *Agent) mqttChecker(ctx context.Context, v *view, sv *serviceView, port, sourceID, sourceNode string) func(kind string, topics []string) bool {
	ns, name := sv.svc.Meta.Namespace, sv.svc.Meta.Name
	if !v.authz.MQTTRules(ns, name) {
		return nil
	}
	num, _ := portOf(sv, port)
	return func(kind string, topics []string) bool {
		v := a.view.Load()
		r := authz.Request{SourceID: sourceID, SourceNode: sourceNode, Namespace: ns, Service: name, Port: port, PortNumber: num, Proto: authz.MQTT}
		switch kind {
		case "publish":
			r.MQTT = authz.MQTTPublish
		case "subscribe":
			r.MQTT = authz.MQTTSubscribe
		default:
			return true
		}
		for _, t := range topics {
			r.Topic = t
			if !a.decide(ctx, v.authz, &r).Allow {
				return false
			}
		}
		return true
	}
}

// authorizeStream is DialLocal's check of a mesh stream before it dials.
//
// In secure mode every stream of an HTTP, HTTP/2 or gRPC port is served
// per request (authzServer), also when no policy selects the destination:
// each request's source identity arrives in SourceIDHeader, written by the
// source node, and only a per-request server can take a claim the node may
// not make (one it hosts no endpoint of) away before the workload sees it.
// Relaying the bytes would hand a lying node's claim to the workload as
// vouched. On an auto port the stream's first bytes decide, as at the
// source.
func (a *Agent) authorizeStream(ctx context.Context, h transport.Header) (authzMode, error) {
	v := a.view.Load()
	sv := v.services[h.Namespace+"/"+h.Service]
	if sv == nil && (a.ident != nil || v.authz != nil || a.obs != nil) {
		// A stream for a service this agent does not hold yet (a peer
		// learnt of this node's endpoint while this agent still applies
		// its first configuration, or a scoped agent learns it now) waits
		// for it, for its mode depends on it: secure mode and policies
		// authorize what they forward, and are refused if it does not
		// come (its policies are unknown until then); traces and access
		// logs serve its HTTP ports per request. A stream decided as bytes
		// stays so: an HTTP upstream connection pooled at the source
		// carries every later request the same way. Only for a workload
		// of that service here: a peer's made-up names neither wait nor
		// widen a scoped agent's subscription.
		a.mu.Lock()
		ws := a.workloads[h.Endpoint]
		a.mu.Unlock()
		mustKnow := a.ident != nil || v.authz != nil
		if ws == nil || ws.w.Service != h.Service || ws.w.Namespace != h.Namespace {
			if mustKnow {
				return modeNone, fmt.Errorf("%w: %s/%s endpoint %s", transport.ErrUnknownDestination, h.Namespace, h.Service, h.Endpoint)
			}
			return modeNone, nil
		}
		if v, sv = a.awaitService(ctx, h.Namespace+"/"+h.Service); sv == nil && mustKnow {
			a.m.streamsUnknownService.Inc()
			return modeNone, fmt.Errorf("%w: %s/%s is not known here yet, so it cannot be authorized", transport.ErrUnknownDestination, h.Namespace, h.Service)
		}
	}
	if sv == nil {
		return modeNone, nil
	}
	mode := modeNone
	if v.authz != nil {
		src, node := a.vouch(ctx, h, h.SourceID)
		var d authz.Decision
		d, mode = a.authorizeConn(ctx, v, sv, h.Port, src, node)
		if !d.Allow {
			return modeNone, fmt.Errorf("%w: %s:%s from %q (node %s): %s %s", transport.ErrDenied, h.Service, h.Port, src, node, d.Reason, d.Policy)
		}
	}
	// Secure mode, traces or access logs: HTTP ports are served per
	// request (vouching; the endpoint side's span and log line).
	if mode == modeNone && (a.ident != nil || a.obs != nil) {
		switch p := protoOf(sv, h.Port); {
		case isL7(p):
			mode = modeHTTP
		case p == "auto":
			mode = modeDetect
		}
	}
	return mode, nil
}

// meshConn is the local side of a mesh stream with what RelayStream needs.
type meshConn struct {
	*countedConn
	mode authzMode
	addr string // the workload's address, for further connections (HTTP)
}

// RelayStream implements transport.StreamRelayer: streams that must be
// authorized per request or per packet are served here; others are
// relayed as bytes.
func (a *Agent) RelayStream(ctx context.Context, h transport.Header, stream, local net.Conn) {
	if u, ok := local.(*udpLocal); ok { // a udp flow: udpmesh.go
		a.relayUDP(ctx, h, stream, u)
		return
	}
	mc, ok := local.(*meshConn)
	if !ok || mc.mode == modeNone {
		relayBytes(ctx, stream, local)
		return
	}
	proto, perConn := "", false
	if mc.mode == modeDetect {
		var peeked, fromLocal []byte
		var err error
		proto, peeked, fromLocal, err = detectStream(ctx, stream, local, a.panicked)
		if err != nil {
			stream.Close()
			local.Close()
			return
		}
		if proto != "http" && proto != "http2" {
			if err := writeAll(local, peeked, stream, fromLocal); err != nil {
				stream.Close()
				local.Close()
				return
			}
			relayBytes(ctx, stream, local)
			return
		}
		stream = &prefixConn{Conn: stream, r: io.MultiReader(bytes.NewReader(peeked), stream)}
		mc.mode, perConn = modeHTTP, true
	}
	defer stream.Close()
	defer local.Close()
	v := a.view.Load()
	sv := v.services[h.Namespace+"/"+h.Service]
	if sv == nil {
		return
	}
	src, node := a.vouch(ctx, h, h.SourceID)
	switch mc.mode {
	case modeMQTT:
		a.serveMQTTStream(ctx, stream, local, h.Namespace+"/"+h.Service, src, a.mqttChecker(ctx, v, sv, h.Port, src, node))
	case modeHTTP:
		if proto == "" {
			proto = protoOf(sv, h.Port)
		}
		a.authzHTTP.serve(ctx, stream, &meshStream{h: h, sourceID: src, sourceNode: node, local: mc, proto: proto, streamCtx: ctx, perConn: perConn, agentWritten: h.L7})
	}
}

// detectStream names the protocol of a mesh stream to an auto port from
// its first bytes, as detect does at the source, but with no time limit:
// a client that waits, or pauses inside an HTTP method, past the source's
// window was relayed as TCP and still writes HTTP, which must be served
// per request here, never relayed with the identity headers it wrote. The
// decision is tcp once the bytes cannot start HTTP, the client ends the
// stream, or the workload speaks first (a server-speaks-first protocol:
// its bytes, fromLocal, go to the client first). A client-first protocol
// whose first message is a strict prefix of an HTTP method ("G", "PO")
// and then waits for an answer waits until ctx ends (README, auto ports).
// A panic of either read (a bug, in a connection's Read) goes to
// panicked, and the stream fails (errDetectPanicked).
func detectStream(ctx context.Context, stream, local net.Conn, panicked func(what string, p any)) (proto string, peeked, fromLocal []byte, err error) {
	type clientRes struct {
		buf []byte
		err error
	}
	cc := make(chan clientRes, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				panicked("reading a mesh stream to detect its protocol", p)
				cc <- clientRes{nil, errDetectPanicked}
			}
		}()
		var buf []byte
		tmp := make([]byte, 16)
		for len(buf) < 8 {
			n, err := stream.Read(tmp[:16-len(buf)])
			buf = append(buf, tmp[:n]...)
			if err != nil {
				cc <- clientRes{buf, err}
				return
			}
			if (len(buf) > 0 && buf[0] == 0x10) || !couldBeHTTP(buf) {
				break
			}
		}
		cc <- clientRes{buf, nil}
	}()
	type localRes struct {
		buf []byte
		err error
	}
	lc := make(chan localRes, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				panicked("reading a workload's connection to detect its protocol", p)
				lc <- localRes{nil, errDetectPanicked}
			}
		}()
		b := make([]byte, 4<<10)
		n, err := local.Read(b)
		lc <- localRes{b[:n], err}
	}()
	past := time.Unix(1, 0)
	select {
	case <-ctx.Done():
		stream.SetReadDeadline(past)
		local.SetReadDeadline(past)
		<-cc
		<-lc
		return "", nil, nil, fmt.Errorf("detect: %w", ctx.Err())
	case r := <-lc:
		// The workload spoke (or ended) first: no HTTP server does.
		stream.SetReadDeadline(past)
		c := <-cc
		stream.SetReadDeadline(time.Time{})
		if c.err == errDetectPanicked || r.err == errDetectPanicked {
			return "", nil, nil, errDetectPanicked
		}
		if r.err != nil && len(r.buf) == 0 && !errors.Is(r.err, io.EOF) {
			return "", nil, nil, fmt.Errorf("detect: workload: %w", r.err)
		}
		return "tcp", c.buf, r.buf, nil
	case c := <-cc:
		local.SetReadDeadline(past)
		r := <-lc
		local.SetReadDeadline(time.Time{})
		if c.err == errDetectPanicked || r.err == errDetectPanicked {
			return "", nil, nil, errDetectPanicked
		}
		if len(r.buf) > 0 { // the workload spoke at the same time
			return "tcp", c.buf, r.buf, nil
		}
		if r.err != nil && !errors.Is(r.err, os.ErrDeadlineExceeded) {
			// The workload ended the connection: relay what there is.
			return "tcp", c.buf, nil, nil
		}
		// Also when the client ended the stream: what it sent decides.
		p, _ := detectBytes(c.buf)
		return p, c.buf, nil, nil
	}
}

// errDetectPanicked: a read of detectStream's panicked.
var errDetectPanicked = errors.New("detect: a read panicked")

// writeAll writes the bytes detectStream read back where they were going:
// toLocal to the workload, toStream to the client.
func writeAll(local net.Conn, toLocal []byte, stream net.Conn, toStream []byte) error {
	if len(toLocal) > 0 {
		if _, err := local.Write(toLocal); err != nil {
			return fmt.Errorf("replay to the workload: %w", err)
		}
	}
	if len(toStream) > 0 {
		if _, err := stream.Write(toStream); err != nil {
			return fmt.Errorf("replay to the client: %w", err)
		}
	}
	return nil
}

func protoOf(sv *serviceView, port string) string {
	_, p := portOf(sv, port)
	return p
}

// awaitService waits up to scopeWait for the view to hold service key and
// returns that view and the service (nil if it did not come).
func (a *Agent) awaitService(ctx context.Context, key string) (*view, *serviceView) {
	a.scope.add(key) // a scoped agent asks the control plane for it
	ctx, cancel := context.WithTimeout(ctx, scopeWait)
	defer cancel()
	_ = a.scope.wait(ctx, func() bool { return a.view.Load().services[key] != nil })
	v := a.view.Load()
	return v, v.services[key]
}
