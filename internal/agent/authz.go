package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/authz"
	"github.com/fogmesh/fogmesh/internal/httpproxy"
	"github.com/fogmesh/fogmesh/internal/proxy"
	"github.com/fogmesh/fogmesh/internal/transport"
)

// Authorization is enforced by the agent of the destination endpoint, or
// by the client's agent where the endpoint has no agent of its own (a
// static endpoint, applied with 'fogmesh apply'; see decidesHere):
//
//   - TCP ports: once per mesh stream (DialLocal), or per accepted VIP
//     connection for a local endpoint (handleConn); a denied mesh stream is
//     answered transport.StatusDenied and the source agent closes its
//     client's connection.
//   - HTTP, HTTP/2 and gRPC ports selected by any policy: per request. For
//     a remote endpoint the mesh stream is served by this agent's HTTP
//     server (authzServer), which authorizes each request and proxies it to
//     the workload; for a local endpoint the L7 path asks before each
//     attempt (authorizeLocalRequest). Denied: 403, or for gRPC
//     PERMISSION_DENIED (trailers-only).
//   - MQTT ports whose policies have topic rules: the source is authorized
//     when the connection opens, the CONNECT's will topic as a PUBLISH (a
//     denied will is refused with a CONNACK before the broker sees the
//     CONNECT), then each PUBLISH (topic aliases resolved) and SUBSCRIBE
//     through the inspecting relay; a denied packet closes the connection
//     (MQTT 5 first gets DISCONNECT 0x87 Not authorized). See mqtt.go.
//   - auto ports are authorized per connection (as TCP).
//
// Only destinations that a policy selects are metered and logged.

// decidesHere reports whether this agent authorizes what it sends to ev:
// a local endpoint, or a static one, which no agent stands in front of.
// Requests to any other endpoint are decided by the endpoint's agent.
func decidesHere(ev *endpointView) bool { return ev.local || ev.mesh == "" }

// SourceIDHeader carries the SPIFFE ID of the client workload from the
// source agent to the destination agent on L7 requests: pooled upstream
// connections are shared by all clients, so the stream header cannot name
// one. The source agent always overwrites it (a client cannot forge it);
// the destination trusts it exactly as far as the stream header's sourceId.
const SourceIDHeader = httpproxy.IdentityHeader

// DecisionLogger records authorization decisions (the audit log plugs in
// here). LogDecision is called once for every decision on a destination a
// policy selects, from many goroutines at once: it must be safe for
// concurrent use and must not block, since the connection or request waits.
type DecisionLogger interface {
	LogDecision(ctx context.Context, d AuthzRecord)
}

// AuthzRecord is one decision with what it was made on.
type AuthzRecord struct {
	Time     time.Time
	Node     string // the enforcing agent's node
	Request  authz.Request
	Decision authz.Decision
}

// slogDecisions is the default DecisionLogger: debug for allowed, info for
// denied.
type slogDecisions struct{ log *slog.Logger }

func (l slogDecisions) LogDecision(ctx context.Context, d AuthzRecord) {
	level, msg := slog.LevelDebug, "authz: allowed"
	if !d.Decision.Allow {
		level, msg = slog.LevelInfo, "authz: denied"
	}
	if !l.log.Enabled(ctx, level) {
		return
	}
	r := &d.Request
	attrs := []any{"service", r.Namespace + "/" + r.Service, "port", r.Port, "source", r.SourceID, "sourceNode", r.SourceNode,
		"policy", d.Decision.Policy, "reason", d.Decision.Reason}
	switch r.Proto {
	case authz.HTTP:
		attrs = append(attrs, "method", r.Method, "path", r.Path)
	case authz.MQTT:
		if r.Topic != "" {
			attrs = append(attrs, "topic", r.Topic)
		}
	}
	l.log.Log(ctx, level, msg, attrs...)
}

var _ DecisionLogger = slogDecisions{}

// compileAuthz compiles the policies of the configuration. They were
// validated when decoded; one that still does not compile (a newer control
// plane's feature, a cache written by one) fails closed: it is replaced by
// a DENY of everything it selects (its service, or without one its whole
// namespace) under its own name, so that dropping it can never open what
// it denied, nor what it was the only ALLOW of. The other policies are
// kept. It returns what was replaced, one error per policy, sorted.
func compileAuthz(ps map[string]*api.AuthorizationPolicy) (*authz.Engine, []error) {
	if len(ps) == 0 {
		return nil, nil
	}
	list := make([]*api.AuthorizationPolicy, 0, len(ps))
	var invalid []error
	for _, p := range ps {
		if _, err := authz.Compile([]*api.AuthorizationPolicy{p}); err != nil {
			invalid = append(invalid, err)
			p = denyAllSelectedBy(p)
		}
		list = append(list, p)
	}
	sort.Slice(invalid, func(i, j int) bool { return invalid[i].Error() < invalid[j].Error() })
	e, err := authz.Compile(list)
	if err != nil { // cannot be (each compiled alone), but never fail open
		for i, p := range list {
			list[i] = denyAllSelectedBy(p)
		}
		e, _ = authz.Compile(list)
		invalid = append(invalid, err)
	}
	return e, invalid
}

// denyAllSelectedBy is the policy that stands in for p when p cannot be
// enforced: DENY, with one rule that matches every request.
func denyAllSelectedBy(p *api.AuthorizationPolicy) *api.AuthorizationPolicy {
	return &api.AuthorizationPolicy{APIVersion: p.APIVersion, Kind: p.Kind, Meta: p.Meta,
		Spec: api.AuthorizationPolicySpec{Service: p.Spec.Service, MeshWide: p.Spec.MeshWide, Action: api.ActionDeny, Rules: []api.AuthzRule{{}}}}
}

// noteInvalidPolicies logs the policies that fail closed in v and were not
// already failing in old, and keeps fogmesh_authz_invalid_policies (how
// many fail closed now) registered.
func (a *Agent) noteInvalidPolicies(old, v *view) {
	a.cfg.Metrics.GetOrCreateGauge(`fogmesh_authz_invalid_policies`, func() float64 {
		if v := a.view.Load(); v != nil {
			return float64(len(v.authzInvalid))
		}
		return 0
	})
	known := map[string]bool{}
	if old != nil {
		for _, err := range old.authzInvalid {
			known[err.Error()] = true
		}
	}
	for _, err := range v.authzInvalid {
		if !known[err.Error()] {
			a.log.Error("agent: authorization policy cannot be enforced; denying everything it selects", "err", err)
		}
	}
}

// localIdentities maps the addresses of this node's workloads to their
// SPIFFE IDs. An address shared by workloads of different identities maps
// to "" (unknown): the agent cannot tell them apart.
func localIdentities(td string, local []api.Endpoint) map[netip.Addr]string {
	ids := map[netip.Addr]string{}
	for i := range local {
		addr, err := netip.ParseAddr(local[i].Spec.Address)
		if err != nil {
			continue
		}
		id := api.EndpointID(td, &local[i])
		if old, ok := ids[addr.Unmap()]; ok && old != id {
			id = ""
		}
		ids[addr.Unmap()] = id
	}
	return ids
}

// clientIdentity is the SPIFFE ID of the local workload a client connection
// comes from, or "" when unknown: the workload registered at its source
// address, and if that workload declares attest selectors, only when the
// process holding the client socket matches them (localid.go). It is what
// the source agent claims in Header.SourceID and SourceIDHeader; it is
// computed once per connection, at accept.
func (a *Agent) clientIdentity(c net.Conn) string {
	remote, ok1 := tcpAddrPort(c.RemoteAddr())
	local, ok2 := tcpAddrPort(c.LocalAddr())
	if !ok1 || !ok2 {
		return ""
	}
	v := a.view.Load() // one view: the address's identity and its selectors agree
	return a.attestedIdentity(v, identityOf(v, remote.Addr()), remote, local)
}

func identityOf(v *view, addr netip.Addr) string {
	id := v.ids[addr.Unmap()]
	if len(id) > transport.MaxFieldLen {
		return ""
	}
	return id
}

// relayBytes is the mesh server's default relay.
func relayBytes(ctx context.Context, stream, local net.Conn) {
	defer stream.Close()
	defer local.Close()
	proxy.Relay(ctx, stream, local)
}

// vouch is the source identity the destination agent accepts for a mesh
// stream or request: the source node is h.Source, which the mesh server has
// already checked against the TLS peer certificate (secure mode). The
// claimed workload identity is accepted from a node of this trust domain
// only if an endpoint of that node has it (a node may speak for its own
// workloads, no others), and from a node of a federated trust domain only
// for that domain's identities (the foreign mesh vouches for its own).
// Anything else becomes "" (unknown), which no principal rule matches, and
// is counted. In insecure mode both are taken as claimed. ctx is the mesh
// stream's (transport.PeerFromContext).
func (a *Agent) vouch(ctx context.Context, h transport.Header, claimed string) (sourceID, sourceNode string) {
	if claimed == "" || a.ident == nil {
		return claimed, h.Source
	}
	if a.view.Load().nodeIDs[h.Source][claimed] {
		return claimed, h.Source
	}
	if p, ok := transport.PeerFromContext(ctx); ok && p.ID.TrustDomain() != a.ident.td {
		if id, err := spiffeid.FromString(claimed); err == nil && id.TrustDomain() == p.ID.TrustDomain() {
			return claimed, h.Source
		}
	}
	a.m.unvouched.Inc()
	a.log.Warn("agent: source identity not vouched for by its node; treated as unknown", "node", h.Source, "claimed", claimed)
	return "", h.Source
}

type sourceIDKey struct{}

// withClientIdentity makes dialEndpoint send id as the stream's sourceId.
// Only per-connection (L4) dials carry it: pooled L7 connections serve
// many clients and carry SourceIDHeader per request instead.
func withClientIdentity(ctx context.Context, id string) context.Context {
	if id == "" {
		return ctx
	}
	return context.WithValue(ctx, sourceIDKey{}, id)
}

func clientIdentityFrom(ctx context.Context) string {
	id, _ := ctx.Value(sourceIDKey{}).(string)
	return id
}

// decide evaluates r, meters and logs the decision when a policy selects
// the destination.
func (a *Agent) decide(ctx context.Context, e *authz.Engine, r *authz.Request) authz.Decision {
	d := e.Decide(r)
	if d.Reason == authz.ReasonNoPolicy {
		return d
	}
	a.authzCounter(r.Namespace+"/"+r.Service, d).Inc()
	logger := a.cfg.DecisionLogger
	if logger == nil {
		logger = slogDecisions{a.log}
	}
	rec := AuthzRecord{Time: time.Now(), Node: a.cfg.Node.Name, Request: *r, Decision: d}
	rec.Request.Header = nil // headers may hold credentials; method and path say enough
	logger.LogDecision(ctx, rec)
	a.auditDecision(&rec)
	return d
}

// auditDecision writes a decision to the node's audit chain (which ones:
// Config.Audit.Decisions). A full buffer is counted and noted in the chain
// by the audit log itself, so the error needs no handling here.
func (a *Agent) auditDecision(rec *AuthzRecord) {
	if !a.auditWants(rec.Decision.Allow) {
		return // before building the record's strings: allows are most requests
	}
	r := &rec.Request
	action := "connect"
	switch r.Proto {
	case authz.HTTP:
		action = r.Method + " " + r.Path
	case authz.MQTT:
		if r.Topic != "" {
			action = "mqtt " + r.Topic
		}
	}
	src := r.SourceID
	if src == "" && r.SourceNode != "" {
		src = "node:" + r.SourceNode
	}
	policy := rec.Decision.Policy
	if policy == "" {
		policy = rec.Decision.Reason
	}
	_ = a.AuditDecision(AuthzDecision{Source: src, Action: action,
		Target: r.Namespace + "/" + r.Service + ":" + r.Port, Allow: rec.Decision.Allow, Policy: policy})
}

type authzMetricKey struct {
	allow       bool
	svc, policy string
}

func (a *Agent) authzCounter(svc string, d authz.Decision) interface{ Inc() } {
	k := authzMetricKey{d.Allow, svc, d.Policy}
	if c, ok := a.authzSeries.Load(k); ok {
		return c.(interface{ Inc() })
	}
	decision, policy := "allow", d.Policy
	if !d.Allow {
		decision = "deny"
	}
	if policy == "" {
		policy = "none"
	}
	c := a.cfg.Metrics.GetOrCreateCounter(fmt.Sprintf(`fogmesh_authz_decisions_total{decision=%q,service=%q,policy=%q}`, decision, svc, policy))
	a.authzSeries.Store(k, c)
	return c
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
	if mode == modeNone && a.ident != nil {
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
	mc, ok := local.(*meshConn)
	if !ok || mc.mode == modeNone {
		relayBytes(ctx, stream, local)
		return
	}
	proto, perConn := "", false
	if mc.mode == modeDetect {
		var peeked, fromLocal []byte
		var err error
		proto, peeked, fromLocal, err = detectStream(ctx, stream, local)
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
		a.serveMQTTStream(ctx, stream, local, h.Namespace+"/"+h.Service, a.mqttChecker(ctx, v, sv, h.Port, src, node))
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
func detectStream(ctx context.Context, stream, local net.Conn) (proto string, peeked, fromLocal []byte, err error) {
	type clientRes struct {
		buf []byte
		err error
	}
	cc := make(chan clientRes, 1)
	go func() {
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
		if r.err != nil && len(r.buf) == 0 && !errors.Is(r.err, io.EOF) {
			return "", nil, nil, fmt.Errorf("detect: workload: %w", r.err)
		}
		return "tcp", c.buf, r.buf, nil
	case c := <-cc:
		local.SetReadDeadline(past)
		r := <-lc
		local.SetReadDeadline(time.Time{})
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

// authzServer serves the mesh streams of HTTP ports whose requests must be
// authorized one by one: one HTTP server (HTTP/1.1 and h2c) per agent, fed
// stream by stream.
type authzServer struct {
	a   *Agent
	ln  *connListener
	srv *http.Server
	rp  *httputil.ReverseProxy
}

type meshStreamKey struct{}

// meshStream is one stream served by authzServer.
type meshStream struct {
	h                    transport.Header
	sourceID, sourceNode string
	proto                string
	local                *meshConn
	// streamCtx is the mesh stream's context (its TLS peer), for vouching
	// per request.
	streamCtx context.Context
	// perConn: the stream was authorized when it opened (an auto port, as
	// a TCP connection); its requests are vouched for, not decided again.
	perConn bool
	// agentWritten: the stream is L7 (transport.Header.L7), its requests
	// written by the source agent. Otherwise the bytes are a client's,
	// and no identity or forwarding header in them is believed.
	agentWritten bool

	mu sync.Mutex // guards t
	t  *http.Transport
}

// transport returns the stream's upstream pool: its first connection is
// the one DialLocal opened, further ones are dialed.
func (ms *meshStream) transport() *http.Transport {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	if ms.t == nil {
		var protos http.Protocols
		if ms.proto == "http" {
			protos.SetHTTP1(true)
		} else {
			protos.SetUnencryptedHTTP2(true)
		}
		var first atomic.Pointer[meshConn]
		first.Store(ms.local)
		ms.t = &http.Transport{Protocols: &protos, MaxIdleConnsPerHost: 8, IdleConnTimeout: 90 * time.Second,
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				if c := first.Swap(nil); c != nil {
					return c, nil
				}
				var d net.Dialer
				return d.DialContext(ctx, "tcp", ms.local.addr)
			}}
	}
	return ms.t
}

// closeIdle closes the stream's idle upstream connections.
func (ms *meshStream) closeIdle() {
	ms.mu.Lock()
	t := ms.t
	ms.mu.Unlock()
	if t != nil {
		t.CloseIdleConnections()
	}
}

// servedConn marks the end of a stream handed to the HTTP server.
type servedConn struct {
	net.Conn
	ms     *meshStream
	closed chan struct{}
	once   sync.Once
}

func (c *servedConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

func newAuthzServer(a *Agent) *authzServer {
	s := &authzServer{a: a, ln: &connListener{ch: make(chan net.Conn), closed: make(chan struct{})}}
	s.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			httpproxy.ScrubProxyRequest(pr)
			// The source agent set the forwarding headers, and handle the
			// identity this agent vouched for: they pass on.
			for _, k := range sourceAgentHeaders {
				if v := pr.In.Header[k]; v != nil {
					pr.Out.Header[k] = v
				}
			}
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = pr.In.Host
			if pr.Out.URL.Host == "" {
				pr.Out.URL.Host = "workload"
			}
			pr.Out.Host = pr.In.Host
		},
		Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
			ms := r.Context().Value(meshStreamKey{}).(*meshStream)
			resp, err := ms.transport().RoundTrip(r)
			if tb := httpproxy.TimedBodyOf(r); tb != nil && err == nil {
				tb.Stop() // response header: the body bound ends (httpproxy.TimedBody)
			}
			return resp, err
		}),
		FlushInterval: -1,
		ModifyResponse: func(resp *http.Response) error {
			resp.Header.Del(hdrWorkloadRefused) // only this agent says so, never the workload
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			a.log.Debug("agent: authorized request failed", "host", r.Host, "err", err)
			code := http.StatusBadGateway
			if httpproxy.BodyTimedOut(r) {
				code = http.StatusRequestTimeout
			} else if isDialFailure(err) {
				peerRefusedResponse(w)
				return
			}
			w.WriteHeader(code)
		},
		ErrorLog: slog.NewLogLogger(a.log.Handler(), slog.LevelDebug),
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	s.srv = &http.Server{
		Handler:           a.normalizingHandler(http.HandlerFunc(s.handle)),
		Protocols:         &protos,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       5 * time.Minute,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if sc, ok := c.(*servedConn); ok {
				return context.WithValue(ctx, meshStreamKey{}, sc.ms)
			}
			return ctx
		},
		ErrorLog: slog.NewLogLogger(a.log.Handler(), slog.LevelDebug),
	}
	return s
}

// sourceAgentHeaders are the headers of a remote request that the source
// agent set (or, for SourceIDHeader, authzServer.handle after vouching).
var sourceAgentHeaders = []string{SourceIDHeader, "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func (s *authzServer) run() error {
	s.srv.Serve(s.ln)
	return nil
}

func (s *authzServer) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s.srv.Shutdown(ctx)
	s.srv.Close()
	s.ln.Close()
}

// serve hands the stream to the HTTP server and waits until it is done.
func (s *authzServer) serve(ctx context.Context, stream net.Conn, ms *meshStream) {
	sc := &servedConn{Conn: stream, ms: ms, closed: make(chan struct{})}
	if !s.ln.push(sc) {
		return
	}
	select {
	case <-sc.closed:
	case <-ctx.Done():
		sc.Close()
	}
	ms.closeIdle()
}

func (s *authzServer) handle(w http.ResponseWriter, r *http.Request) {
	ms, _ := r.Context().Value(meshStreamKey{}).(*meshStream)
	if ms == nil {
		http.Error(w, "fogmesh: no stream", http.StatusInternalServerError)
		return
	}
	v := s.a.view.Load()
	sv := v.services[ms.h.Namespace+"/"+ms.h.Service]
	if sv == nil {
		http.Error(w, "fogmesh: unknown service", http.StatusServiceUnavailable)
		return
	}
	src := ms.sourceID
	if !ms.agentWritten {
		// A client's bytes relayed raw by its agent: the stream's vouched
		// identity is the only one, and no X-Forwarded-* is the agent's.
		httpproxy.DropForwardedHeaders(r.Header)
	} else if claimed := r.Header.Get(SourceIDHeader); claimed != "" {
		src, _ = s.a.vouch(ms.streamCtx, ms.h, claimed)
	}
	// The workload sees the identity this agent accepted, never a claim
	// it refused, in no spelling.
	httpproxy.DropIdentityHeaders(r.Header)
	if src != "" {
		r.Header.Set(SourceIDHeader, src)
	}
	if ms.perConn { // decided when the stream opened
		s.rp.ServeHTTP(w, r)
		return
	}

	num, _ := portOf(sv, ms.h.Port)
	req := authz.Request{SourceID: src, SourceNode: ms.sourceNode, Namespace: ms.h.Namespace, Service: ms.h.Service,
		Port: ms.h.Port, PortNumber: num, Proto: authz.HTTP, Method: r.Method, Path: authzPath(r), Header: r.Header}
	if d := s.a.decide(r.Context(), v.authz, &req); !d.Allow {
		writeDenied(w, r.Header)
		return
	}
	if r.Body != nil && r.Body != http.NoBody {
		// The source agent bounds its client's body; this bounds a peer's
		// (timeouts.requestBody between reads, not the request timeout,
		// which a route or class may raise where the request entered).
		tb := httpproxy.NewTimedBody(r.Body, http.NewResponseController(w).SetReadDeadline)
		tb.Arm(time.Duration(sv.svc.Spec.Timeouts.RequestBody), 0)
		r = r.WithContext(httpproxy.WithTimedBody(r.Context(), tb))
		r.Body = tb
	}
	s.rp.ServeHTTP(w, r)
}

const deniedMessage = "RBAC: access denied"

// writeDenied answers a denied request: 403, or for gRPC a trailers-only
// PERMISSION_DENIED (7).
func writeDenied(w http.ResponseWriter, reqHeader http.Header) {
	if strings.HasPrefix(reqHeader.Get("Content-Type"), "application/grpc") {
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Grpc-Status", "7")
		w.Header().Set("Grpc-Message", "fogmesh: "+deniedMessage)
		w.WriteHeader(http.StatusOK)
		return
	}
	http.Error(w, "fogmesh: "+deniedMessage, http.StatusForbidden)
}

// deniedResponse is writeDenied as a response, for the L7 transport.
func deniedResponse(req *http.Request) *http.Response {
	resp := &http.Response{StatusCode: http.StatusForbidden, Status: "403 Forbidden", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{}, Request: req}
	if strings.HasPrefix(req.Header.Get("Content-Type"), "application/grpc") {
		resp.StatusCode, resp.Status = http.StatusOK, "200 OK"
		resp.Header.Set("Content-Type", "application/grpc")
		resp.Header.Set("Grpc-Status", "7")
		resp.Header.Set("Grpc-Message", "fogmesh: "+deniedMessage)
		resp.Body = http.NoBody
		return resp
	}
	body := "fogmesh: " + deniedMessage + "\n"
	resp.Header.Set("Content-Type", "text/plain; charset=utf-8")
	resp.Header.Set("X-Content-Type-Options", "nosniff")
	resp.Body, resp.ContentLength = io.NopCloser(strings.NewReader(body)), int64(len(body))
	return resp
}

// setSourceIdentity is the L7 path's hook on every outgoing request: it
// replaces whatever SourceIDHeader the client sent with the identity of the
// client's connection, found at accept (clientIdentity; ctx is the
// connection's), or removes it when unknown.
func (a *Agent) setSourceIdentity(ctx context.Context, out *http.Request) {
	out.Header.Del(SourceIDHeader)
	if id := connIdentityFrom(ctx); id != "" {
		out.Header.Set(SourceIDHeader, id)
	}
}

// authorizeLocalRequest is the L7 path's hook before a request goes to a
// local or static endpoint (decidesHere): nil when allowed, else the
// response to give.
func (a *Agent) authorizeLocalRequest(req *http.Request, t listenTarget) *http.Response {
	v := a.view.Load()
	sv := v.services[t.svc]
	if sv == nil || !v.authz.Selects(sv.svc.Meta.Namespace, sv.svc.Meta.Name) {
		return nil
	}
	num, _ := portOf(sv, t.port)
	r := authz.Request{SourceID: req.Header.Get(SourceIDHeader), SourceNode: a.cfg.Node.Name, Namespace: sv.svc.Meta.Namespace,
		Service: sv.svc.Meta.Name, Port: t.port, PortNumber: num, Proto: authz.HTTP, Method: req.Method, Path: authzPath(req), Header: req.Header}
	if a.decide(req.Context(), v.authz, &r).Allow {
		return nil
	}
	return deniedResponse(req)
}

// hdrWorkloadRefused marks the answer of a destination agent that could not
// connect to its workload for a request of a stream it serves per request
// (the stream's first connection was made when it opened; later ones per
// request): the client's agent then fails over to another endpoint as after
// a refused connect, for any method, since nothing of the request was sent.
// The destination agent removes it from workload responses.
const hdrWorkloadRefused = "X-Fogmesh-Workload-Refused"

var errWorkloadRefused = errors.New("the endpoint's agent could not connect to its workload")

func peerRefusedResponse(w http.ResponseWriter) {
	w.Header().Set(hdrWorkloadRefused, "1")
	w.WriteHeader(http.StatusServiceUnavailable)
}

// isDialFailure reports whether err is a failure to connect (nothing sent).
func isDialFailure(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "dial"
}
