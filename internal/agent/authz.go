package agent

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/authz"
	"github.com/fogmesh/fogmesh/internal/httpproxy"
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
//
// This file compiles the policies (failing closed), decides, meters and
// logs decisions, and answers denials. Who the source is: vouch.go; a
// connection or mesh stream as it opens: authzconn.go; each request of a
// mesh stream at the destination: authzserver.go.

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
	} else {
		h2WillWait(ctx) // a user's logger may wait (l7h2wait.go)
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

// authorizeLocalRequest is the L7 path's hook before a request goes to a
// local or static endpoint (decidesHere): nil when allowed, else the
// response to give; decided: a policy applied (the decision was made,
// counted and logged; lbTransport then reads its own clock, reqShare).
func (a *Agent) authorizeLocalRequest(req *http.Request, t listenTarget) (denied *http.Response, decided bool) {
	v := a.view.Load()
	sv := v.services[t.svc]
	if sv == nil || !v.authz.Selects(sv.svc.Meta.Namespace, sv.svc.Meta.Name) {
		return nil, false
	}
	num, _ := portOf(sv, t.port)
	r := authz.Request{SourceID: req.Header.Get(SourceIDHeader), SourceNode: a.cfg.Node.Name, Namespace: sv.svc.Meta.Namespace,
		Service: sv.svc.Meta.Name, Port: t.port, PortNumber: num, Proto: authz.HTTP, Method: req.Method, Path: authzPath(req), Host: req.Host, Header: req.Header}
	if a.decide(req.Context(), v.authz, &r).Allow {
		return nil, true
	}
	return deniedResponse(req), true
}
