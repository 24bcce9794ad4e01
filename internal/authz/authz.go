// Package authz decides whether a request may reach a service: it compiles
// AuthorizationPolicy resources into an engine indexed by destination and
// evaluates one request at a time, without I/O, clocks or locks. The agent
// of the destination endpoint (or the client's, for an endpoint without an
// agent) asks it for every mesh connection, HTTP request (its normalised
// path: internal/pathnorm) and MQTT PUBLISH/SUBSCRIBE
// (internal/agent/authz.go); it exists
// apart from the agent so the semantics can be tested (and benchmarked)
// step by step.
//
// Semantics are Istio's (see api.AuthorizationPolicy): DENY policies first;
// then, if any ALLOW policy selects the destination, the request must match
// one; otherwise it is allowed. Policies select a destination by namespace
// and service; a policy without a service selects every service of its
// namespace.
package authz

// Over 500 lines: the policy compiler and the decision engine share their rule types and matchers.

import (
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"

	"github.com/fogmesh/fogmesh/internal/api"
)

// Proto is what the enforcing agent can see of a request.
type Proto uint8

const (
	// TCP: a connection; HTTP and MQTT attributes are never known.
	TCP Proto = iota
	// HTTP: one HTTP request (also gRPC): method, path and headers known.
	HTTP
	// MQTT: an MQTT connection (MQTTConnect) or one of its client packets.
	MQTT
)

// MQTTAction is the MQTT packet being authorized.
type MQTTAction uint8

const (
	// MQTTConnect: the connection is being opened; topic rules are
	// checked later, per packet.
	MQTTConnect MQTTAction = iota
	// MQTTPublish: Topic is the PUBLISH topic name.
	MQTTPublish
	// MQTTSubscribe: Topic is one topic filter of a SUBSCRIBE.
	MQTTSubscribe
)

// Request is what a decision is made on. The zero value of an attribute
// means unknown.
type Request struct {
	// SourceID is the SPIFFE ID of the source workload, "" when unknown.
	SourceID string
	// SourceNode is the node whose agent opened the connection.
	SourceNode string
	// Namespace and Service name the destination.
	Namespace, Service string
	// Port is the destination service port's name; PortNumber its number.
	Port       string
	PortNumber int
	Proto      Proto
	// HTTP only. Header keys are canonical (as net/http gives them).
	// Host is the authority (HTTP/1.1 Host, HTTP/2 :authority, which
	// net/http keeps out of Header), as received: conditions on
	// request.headers[host] and request.headers[:authority] match it.
	Method, Path, Host string
	Header             http.Header
	// MQTT only.
	MQTT  MQTTAction
	Topic string
}

// Reasons a Decision gives. They are constants so that a decision costs no
// allocation.
const (
	ReasonNoPolicy     = "no policy selects the destination"
	ReasonDenyMatched  = "a DENY policy matched"
	ReasonAllowMatched = "an ALLOW policy matched"
	ReasonNoAllow      = "no ALLOW policy selects the destination"
	ReasonNoAllowMatch = "no ALLOW policy matched"
)

// Decision is the outcome of Decide.
type Decision struct {
	Allow bool
	// Policy is "namespace/name" of the policy that decided, "" when
	// none did (ReasonNoPolicy, ReasonNoAllow, ReasonNoAllowMatch).
	Policy string
	Reason string
}

// Engine is a compiled, immutable policy set. It is safe for concurrent use.
type Engine struct {
	byService   map[destKey]*dest // policies of the service, its namespace and the mesh
	byNamespace map[string]*dest  // namespace-wide and mesh-wide policies only
	// Mesh-wide policies (api.AuthorizationPolicySpec.MeshWide): those
	// selecting a service by its name in any namespace (with meshAll's),
	// and those selecting every service.
	meshService map[string]*dest
	meshAll     *dest
	n           int
}

type destKey struct{ ns, svc string }

// dest is every policy selecting one destination, DENY and ALLOW apart.
type dest struct {
	deny, allow   []*policy
	http, mqtt    bool // some policy has HTTP / MQTT attributes
	allowNoRules  bool // some ALLOW policy has no rules: deny by default
	namespaceWide bool
}

// Compile builds an engine. Policies should have passed Validate; an
// invalid one is reported, naming it, and no engine is returned.
func Compile(policies []*api.AuthorizationPolicy) (*Engine, error) {
	// A stable order makes "the policy that decided" deterministic.
	ps := append([]*api.AuthorizationPolicy(nil), policies...)
	sort.Slice(ps, func(i, j int) bool { return ps[i].Meta.Key() < ps[j].Meta.Key() })
	e := &Engine{byService: map[destKey]*dest{}, byNamespace: map[string]*dest{}, meshService: map[string]*dest{}, n: len(ps)}
	var compiled []*policy
	for _, ap := range ps {
		p, err := compilePolicy(ap)
		if err != nil {
			return nil, fmt.Errorf("authz: policy %s: %w", ap.Meta.Key(), err)
		}
		compiled = append(compiled, p)
	}
	add := func(d *dest, p *policy) {
		if p.deny {
			d.deny = append(d.deny, p)
		} else {
			d.allow = append(d.allow, p)
			d.allowNoRules = d.allowNoRules || len(p.rules) == 0
		}
		d.http = d.http || p.http
		d.mqtt = d.mqtt || p.mqtt
	}
	addAll := func(d, from *dest) {
		if from == nil {
			return
		}
		for _, q := range from.deny {
			add(d, q)
		}
		for _, q := range from.allow {
			add(d, q)
		}
	}
	// Mesh-wide policies first: every narrower destination includes them.
	for _, p := range compiled {
		if p.meshWide && p.service == "" {
			if e.meshAll == nil {
				e.meshAll = &dest{namespaceWide: true}
			}
			add(e.meshAll, p)
		}
	}
	for _, p := range compiled {
		if p.meshWide && p.service != "" {
			d := e.meshService[p.service]
			if d == nil {
				d = &dest{}
				addAll(d, e.meshAll)
				e.meshService[p.service] = d
			}
			add(d, p)
		}
	}
	for _, p := range compiled {
		if p.service == "" && !p.meshWide {
			d := e.byNamespace[p.ns]
			if d == nil {
				d = &dest{namespaceWide: true}
				addAll(d, e.meshAll)
				e.byNamespace[p.ns] = d
			}
			add(d, p)
		}
	}
	// A service's destination: the mesh's policies for every service and
	// for its name, its namespace's, then its own.
	service := func(k destKey) *dest {
		d := e.byService[k]
		if d == nil {
			d = &dest{}
			if ms := e.meshService[k.svc]; ms != nil {
				addAll(d, ms)
			} else {
				addAll(d, e.meshAll)
			}
			if nw := e.byNamespace[k.ns]; nw != nil {
				for _, q := range nw.deny {
					if !q.meshWide {
						add(d, q)
					}
				}
				for _, q := range nw.allow {
					if !q.meshWide {
						add(d, q)
					}
				}
			}
			e.byService[k] = d
		}
		return d
	}
	for _, p := range compiled {
		if p.service != "" && !p.meshWide {
			add(service(destKey{p.ns, p.service}), p)
		}
	}
	// A namespace with namespace-wide policies and a service named by a
	// mesh-wide policy: both apply, so the pair needs its own destination.
	for ns := range e.byNamespace {
		for svc := range e.meshService {
			service(destKey{ns, svc})
		}
	}
	return e, nil
}

// Len returns the number of policies compiled.
func (e *Engine) Len() int {
	if e == nil {
		return 0
	}
	return e.n
}

func (e *Engine) lookup(ns, svc string) *dest {
	if e == nil {
		return nil
	}
	if d := e.byService[destKey{ns, svc}]; d != nil {
		return d
	}
	if d := e.byNamespace[ns]; d != nil {
		return d
	}
	if d := e.meshService[svc]; d != nil {
		return d
	}
	return e.meshAll
}

// Selects reports whether any policy selects the service.
func (e *Engine) Selects(ns, svc string) bool { return e.lookup(ns, svc) != nil }

// HTTPRules reports whether a policy selecting the service has HTTP
// attributes (methods, paths, request headers): then only a per-request
// decision is exact.
func (e *Engine) HTTPRules(ns, svc string) bool {
	d := e.lookup(ns, svc)
	return d != nil && d.http
}

// MQTTRules reports whether a policy selecting the service has MQTT topic
// attributes: then PUBLISH and SUBSCRIBE must be inspected.
func (e *Engine) MQTTRules(ns, svc string) bool {
	d := e.lookup(ns, svc)
	return d != nil && d.mqtt
}

// Decide decides one request. A nil engine allows everything. It does not
// allocate, except for an MQTT SUBSCRIBE filter.
func (e *Engine) Decide(r *Request) Decision {
	d := e.lookup(r.Namespace, r.Service)
	if d == nil {
		return Decision{Allow: true, Reason: ReasonNoPolicy}
	}
	srcNS := namespaceOf(r.SourceID)
	for _, p := range d.deny {
		if p.matches(r, srcNS) {
			return Decision{Allow: false, Policy: p.name, Reason: ReasonDenyMatched}
		}
	}
	if len(d.allow) == 0 {
		return Decision{Allow: true, Reason: ReasonNoAllow}
	}
	for _, p := range d.allow {
		if p.matches(r, srcNS) {
			return Decision{Allow: true, Policy: p.name, Reason: ReasonAllowMatched}
		}
	}
	return Decision{Allow: false, Reason: ReasonNoAllowMatch}
}

// namespaceOf returns <ns> of spiffe://<td>/ns/<ns>/..., or "".
func namespaceOf(id string) string {
	rest, ok := strings.CutPrefix(id, "spiffe://")
	if !ok {
		return ""
	}
	i := strings.IndexByte(rest, '/')
	if i < 0 || !strings.HasPrefix(rest[i:], "/ns/") {
		return ""
	}
	rest = rest[i+len("/ns/"):]
	if j := strings.IndexByte(rest, '/'); j >= 0 {
		return rest[:j]
	}
	return rest
}

// policy is a compiled AuthorizationPolicy.
type policy struct {
	name, ns, service string
	meshWide          bool
	deny              bool
	rules             []rule
	http, mqtt        bool
}

type rule struct {
	from []source
	to   []operation
	when []condition
}

type source struct {
	principals, notPrincipals, namespaces, notNamespaces, nodes, notNodes patterns
}

type operation struct {
	ports, notPorts                      []portMatch
	methods, notMethods, paths, notPaths patterns
	hosts, notHosts                      patterns   // matched ignoring case (anyFold)
	publish, subscribe                   [][]string // topic filters, split in levels
	http, mqtt                           bool
}

type condKind uint8

const (
	condHeader condKind = iota
	condPrincipal
	condNamespace
	condNode
	condPort
	condAuthority // request.headers[host] or [:authority]: Request.Host
)

type condition struct {
	kind              condKind
	header            string // canonical name, for condHeader
	values, notValues patterns
}

func compilePolicy(ap *api.AuthorizationPolicy) (*policy, error) {
	p := &policy{name: ap.Meta.Key(), ns: api.NamespaceOr(ap.Meta.Namespace), service: ap.Spec.Service, meshWide: ap.Spec.MeshWide}
	switch ap.Spec.Action {
	case "", api.ActionAllow:
	case api.ActionDeny:
		p.deny = true
	default:
		return nil, fmt.Errorf("spec.action %q is not ALLOW or DENY", ap.Spec.Action)
	}
	for i, ar := range ap.Spec.Rules {
		var r rule
		for _, s := range ar.From {
			r.from = append(r.from, source{
				principals: compilePatterns(s.Principals), notPrincipals: compilePatterns(s.NotPrincipals),
				namespaces: compilePatterns(s.Namespaces), notNamespaces: compilePatterns(s.NotNamespaces),
				nodes: compilePatterns(s.Nodes), notNodes: compilePatterns(s.NotNodes)})
		}
		for j, o := range ar.To {
			op := operation{
				ports: compilePorts(o.Ports), notPorts: compilePorts(o.NotPorts),
				methods: compilePatterns(o.Methods), notMethods: compilePatterns(o.NotMethods),
				paths: compilePatterns(o.Paths), notPaths: compilePatterns(o.NotPaths),
				hosts: compilePatterns(o.Hosts), notHosts: compilePatterns(o.NotHosts)}
			op.http = len(op.methods)+len(op.notMethods)+len(op.paths)+len(op.notPaths)+len(op.hosts)+len(op.notHosts) > 0
			for k, f := range o.Publish {
				if err := api.ValidTopicFilter(f); err != nil {
					return nil, fmt.Errorf("spec.rules[%d].to[%d].publish[%d]: %w", i, j, k, err)
				}
				op.publish = append(op.publish, strings.Split(f, "/"))
			}
			for k, f := range o.Subscribe {
				if err := api.ValidTopicFilter(f); err != nil {
					return nil, fmt.Errorf("spec.rules[%d].to[%d].subscribe[%d]: %w", i, j, k, err)
				}
				op.subscribe = append(op.subscribe, strings.Split(f, "/"))
			}
			op.mqtt = len(op.publish)+len(op.subscribe) > 0
			p.http = p.http || op.http
			p.mqtt = p.mqtt || op.mqtt
			r.to = append(r.to, op)
		}
		for j, c := range ar.When {
			cd := condition{values: compilePatterns(c.Values), notValues: compilePatterns(c.NotValues)}
			switch c.Key {
			case "source.principal":
				cd.kind = condPrincipal
			case "source.namespace":
				cd.kind = condNamespace
			case "source.node":
				cd.kind = condNode
			case "destination.port":
				cd.kind = condPort
			default:
				name, ok := api.HeaderConditionName(c.Key)
				if !ok {
					return nil, fmt.Errorf("spec.rules[%d].when[%d].key %q is not supported", i, j, c.Key)
				}
				switch {
				case name == api.AuthorityHeader:
					cd.kind = condAuthority
				case strings.HasPrefix(name, ":"):
					return nil, fmt.Errorf("spec.rules[%d].when[%d].key %q: pseudo-header %s is not supported", i, j, c.Key, name)
				default:
					cd.kind, cd.header = condHeader, http.CanonicalHeaderKey(name)
				}
				p.http = true
			}
			r.when = append(r.when, cd)
		}
		p.rules = append(p.rules, r)
	}
	return p, nil
}

// unknown is the value of a condition on an attribute the request does
// not carry. never: it can never be known here (HTTP attributes of a TCP
// connection): an ALLOW rule must not match, a DENY rule matches as if the
// condition were absent (Istio). Otherwise it is pending (topic rules when
// an MQTT connection opens): ALLOW matches for now, DENY waits for the
// packet.
func unknown(deny, never bool) bool {
	if never {
		return deny
	}
	return !deny
}

func (p *policy) matches(r *Request, srcNS string) bool {
	for i := range p.rules {
		if p.rules[i].matches(r, srcNS, p.deny) {
			return true
		}
	}
	return false
}

func (ru *rule) matches(r *Request, srcNS string, deny bool) bool {
	if len(ru.from) > 0 {
		ok := false
		for i := range ru.from {
			if ru.from[i].matches(r, srcNS) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	if len(ru.to) > 0 {
		ok := false
		for i := range ru.to {
			if ru.to[i].matches(r, deny) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	for i := range ru.when {
		if !ru.when[i].matches(r, srcNS, deny) {
			return false
		}
	}
	return true
}

func (s *source) matches(r *Request, srcNS string) bool {
	return s.principals.allows(r.SourceID) && s.notPrincipals.refuses(r.SourceID) &&
		s.namespaces.allows(srcNS) && s.notNamespaces.refuses(srcNS) &&
		s.nodes.allows(r.SourceNode) && s.notNodes.refuses(r.SourceNode)
}

func (o *operation) matches(r *Request, deny bool) bool {
	if len(o.ports) > 0 && !anyPort(o.ports, r) || len(o.notPorts) > 0 && anyPort(o.notPorts, r) {
		return false
	}
	if o.http {
		if r.Proto != HTTP {
			if !unknown(deny, true) {
				return false
			}
		} else if !(o.methods.allows(r.Method) && o.notMethods.refuses(r.Method) &&
			o.paths.allows(r.Path) && o.notPaths.refuses(r.Path) &&
			(len(o.hosts) == 0 || o.hosts.anyFold(r.Host)) && !o.notHosts.anyFold(r.Host)) {
			return false
		}
	}
	if o.mqtt {
		switch {
		case r.Proto != MQTT:
			return unknown(deny, true)
		case r.MQTT == MQTTConnect:
			return unknown(deny, false)
		case r.MQTT == MQTTPublish:
			for _, f := range o.publish {
				if topicMatches(f, r.Topic) {
					return true
				}
			}
			return false
		case r.MQTT == MQTTSubscribe:
			for _, f := range o.subscribe {
				if deny && filterOverlaps(f, r.Topic) || !deny && filterCovers(f, r.Topic) {
					return true
				}
			}
			return false
		}
	}
	return true
}

// headerMatches: v, a value the header was sent with, matches one of
// values (if given) and none of notValues.
func (c *condition) headerMatches(v string) bool {
	return (len(c.values) == 0 || c.values.anyHeader(v)) && !c.notValues.anyHeader(v)
}

func (c *condition) matches(r *Request, srcNS string, deny bool) bool {
	var v string
	switch c.kind {
	case condPrincipal:
		v = r.SourceID
	case condNamespace:
		v = srcNS
	case condNode:
		v = r.SourceNode
	case condPort:
		return (len(c.values) == 0 || c.values.allows(r.Port) || c.values.allows(strconv.Itoa(r.PortNumber))) &&
			c.notValues.refuses(r.Port) && c.notValues.refuses(strconv.Itoa(r.PortNumber))
	case condAuthority:
		if r.Proto != HTTP {
			return unknown(deny, true)
		}
		// One value (net/http refuses a request with two Host lines); a
		// request without one (HTTP/1.0) has no such header. Host names
		// are case-insensitive (RFC 4343): a DENY on example.com also
		// refuses EXAMPLE.com.
		if r.Host == "" {
			return len(c.values) == 0
		}
		return (len(c.values) == 0 || c.values.anyFold(r.Host)) && !c.notValues.anyFold(r.Host)
	case condHeader:
		if r.Proto != HTTP {
			return unknown(deny, true)
		}
		// Istio (Envoy) matches a header sent several times as its values
		// joined with ",". A DENY rule also matches when one value alone
		// would: it then denies at least what Istio denies.
		vs := r.Header[c.header]
		switch {
		case len(vs) == 0:
			return len(c.values) == 0
		case len(vs) == 1:
			return c.headerMatches(vs[0])
		case c.headerMatches(strings.Join(vs, ",")):
			return true
		case deny:
			for _, h := range vs {
				if c.headerMatches(h) {
					return true
				}
			}
		}
		return false
	}
	return c.values.allows(v) && c.notValues.refuses(v)
}
