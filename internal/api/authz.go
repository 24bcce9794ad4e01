package api

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// KindAuthorizationPolicy allows or denies traffic to a service (what an
// Istio security.istio.io AuthorizationPolicy says). The agent of the
// destination endpoint enforces it; internal/authz evaluates it.
const KindAuthorizationPolicy = "AuthorizationPolicy"

// Authorization actions.
const (
	ActionAllow = "ALLOW"
	ActionDeny  = "DENY"
)

// AuthorizationPolicy allows or denies requests to the services of its
// namespace.
//
// Semantics are Istio's: a request is denied if any DENY policy selecting
// its destination matches it; otherwise, if any ALLOW policy selects the
// destination, the request must match one of them; otherwise it is allowed.
// An ALLOW policy without rules therefore denies everything it selects: a
// namespace-wide one (no spec.service) is "default deny" for the namespace,
// and further ALLOW policies open what is wanted.
type AuthorizationPolicy struct {
	APIVersion string                  `json:"apiVersion,omitempty"`
	Kind       string                  `json:"kind,omitempty"`
	Meta       Meta                    `json:"metadata"`
	Spec       AuthorizationPolicySpec `json:"spec"`
}

// AuthorizationPolicySpec selects a destination and says what to do with
// the requests its rules match.
type AuthorizationPolicySpec struct {
	// Service selects the destination service in the policy's namespace;
	// empty selects every service of the namespace.
	Service string `json:"service,omitempty"`
	// MeshWide makes the policy select in every namespace (Service, or
	// every service), as Istio does with a policy in its root namespace
	// (IstioRootNamespace); the policy's own namespace then only names it.
	MeshWide bool `json:"meshWide,omitempty"`
	// Action is ALLOW (default) or DENY.
	Action string `json:"action,omitempty"`
	// Rules: a request matches the policy if it matches any rule (OR). No
	// rules: an ALLOW policy matches nothing (deny all), a DENY policy
	// matches nothing (no effect).
	Rules []AuthzRule `json:"rules,omitempty"`
}

// AuthzRule matches a request when every part given matches (AND): any of
// From, any of To, and all of When.
type AuthzRule struct {
	From []AuthzSource    `json:"from,omitempty"`
	To   []AuthzOperation `json:"to,omitempty"`
	When []AuthzCondition `json:"when,omitempty"`
}

// AuthzSource matches the source of a request; every field given must match
// (AND), a list matches when any of its values does (OR), a not-list when
// none does.
//
// String values match exactly, by prefix ("spiffe://fogmesh.local/ns/shop/*"),
// by suffix ("*/sa/frontend"), or "*": any non-empty value. A source whose
// identity is unknown has an empty principal and namespace: it matches no
// principal or namespace (not even "*") and every notPrincipals and
// notNamespaces.
type AuthzSource struct {
	// Principals are SPIFFE IDs of source workloads
	// (spiffe://<trust domain>/ns/<namespace>/sa/<service account>).
	Principals    []string `json:"principals,omitempty"`
	NotPrincipals []string `json:"notPrincipals,omitempty"`
	// Namespaces are the namespaces of source workloads (from the principal).
	Namespaces    []string `json:"namespaces,omitempty"`
	NotNamespaces []string `json:"notNamespaces,omitempty"`
	// Nodes are names of the nodes whose agents opened the connection.
	Nodes    []string `json:"nodes,omitempty"`
	NotNodes []string `json:"notNodes,omitempty"`
}

// AuthzOperation matches what a request asks of the destination; every
// field given must match (AND).
//
// HTTP fields (methods, paths) only match HTTP requests and MQTT fields
// (publish, subscribe) only MQTT PUBLISH and SUBSCRIBE packets. As in
// Istio, where such a field cannot be known (a TCP port), an ALLOW rule
// using it matches nothing and a DENY rule using it matches regardless of
// that field: unknown never opens, and never lets through what is closed.
type AuthzOperation struct {
	// Ports are service port names or numbers.
	Ports    []string `json:"ports,omitempty"`
	NotPorts []string `json:"notPorts,omitempty"`
	// Methods are HTTP methods (upper case; gRPC calls are POST).
	Methods    []string `json:"methods,omitempty"`
	NotMethods []string `json:"notMethods,omitempty"`
	// Paths are URL paths: exact, prefix ("/api/*"), suffix ("*.json") or
	// "*". gRPC paths are /package.Service/Method.
	Paths    []string `json:"paths,omitempty"`
	NotPaths []string `json:"notPaths,omitempty"`
	// Hosts are the request's authority (HTTP/1.1 Host, HTTP/2
	// :authority) as sent, port included, matched without regard to case:
	// exact, prefix ("api.*"), suffix ("*.example.com") or "*", as Istio's
	// operation.hosts. List "example.com:*" beside "example.com" to match
	// it with any port.
	Hosts    []string `json:"hosts,omitempty"`
	NotHosts []string `json:"notHosts,omitempty"`
	// Publish and Subscribe are MQTT topic filters (+ one level, # the
	// rest). A PUBLISH matches when its topic matches one of Publish; a
	// SUBSCRIBE filter matches when one of Subscribe covers it (every
	// topic it can receive) in an ALLOW policy, or overlaps it (some topic
	// it can receive) in a DENY policy. Giving only one of them matches
	// none of the other kind of packet.
	Publish   []string `json:"publish,omitempty"`
	Subscribe []string `json:"subscribe,omitempty"`
}

// AuthzCondition is one more attribute of the request, as Istio's "when":
// it matches when the attribute matches one of Values (if given) and none of
// NotValues. Keys: request.headers[<name>] (HTTP), source.principal,
// source.namespace, source.node, destination.port. Values match like
// AuthzSource's. request.headers[host] and request.headers[:authority]
// are one header, the request's authority (HTTP/1.1 Host, HTTP/2
// :authority), port included, matched without regard to case; no other
// pseudo-header (:method, :path, :scheme) may be named: to.methods and
// to.paths match those.
type AuthzCondition struct {
	Key       string   `json:"key"`
	Values    []string `json:"values,omitempty"`
	NotValues []string `json:"notValues,omitempty"`
}

func (p *AuthorizationPolicy) GetMeta() *Meta { return &p.Meta }
func (*AuthorizationPolicy) GetKind() string  { return KindAuthorizationPolicy }

var headerKeyRE = regexp.MustCompile(`^request\.headers\[(:?[!#$%&'*+.^_` + "`" + `|~0-9A-Za-z-]+)\]$`)

// AuthorityHeader is the name HeaderConditionName gives both
// request.headers[host] and request.headers[:authority].
const AuthorityHeader = ":authority"

// HeaderConditionName returns the header name of a request.headers[<name>]
// condition key, lower case, and whether key is one. The Host header is
// AuthorityHeader (Envoy's one header for both); another pseudo-header is
// returned as it is, for Validate to refuse.
func HeaderConditionName(key string) (string, bool) {
	m := headerKeyRE.FindStringSubmatch(key)
	if m == nil {
		return "", false
	}
	name := strings.ToLower(m[1])
	if name == "host" {
		name = AuthorityHeader
	}
	return name, true
}

// Validate checks an authorization policy and fills defaults.
func (p *AuthorizationPolicy) Validate() error {
	p.APIVersion, p.Kind = APIVersion, KindAuthorizationPolicy
	p.Meta.Namespace = NamespaceOr(p.Meta.Namespace)
	if err := validName("metadata.name", p.Meta.Name); err != nil {
		return err
	}
	if err := validName("metadata.namespace", p.Meta.Namespace); err != nil {
		return err
	}
	if p.Spec.Service != "" {
		if err := validName("spec.service", p.Spec.Service); err != nil {
			return err
		}
	}
	p.Spec.Action = strings.ToUpper(p.Spec.Action)
	switch p.Spec.Action {
	case "":
		p.Spec.Action = ActionAllow
	case ActionAllow, ActionDeny:
	default:
		return fieldErr("spec.action", "%q is not ALLOW or DENY", p.Spec.Action)
	}
	for i := range p.Spec.Rules {
		r := &p.Spec.Rules[i]
		f := fmt.Sprintf("spec.rules[%d]", i)
		for j, s := range r.From {
			sf := fmt.Sprintf("%s.from[%d]", f, j)
			for _, l := range []struct {
				name string
				vs   []string
			}{{"principals", s.Principals}, {"notPrincipals", s.NotPrincipals}, {"namespaces", s.Namespaces},
				{"notNamespaces", s.NotNamespaces}, {"nodes", s.Nodes}, {"notNodes", s.NotNodes}} {
				if err := validPatterns(sf+"."+l.name, l.vs); err != nil {
					return err
				}
			}
		}
		for j := range r.To {
			o := &r.To[j]
			of := fmt.Sprintf("%s.to[%d]", f, j)
			for _, l := range []struct {
				name string
				vs   []string
			}{{"ports", o.Ports}, {"notPorts", o.NotPorts}, {"methods", o.Methods}, {"notMethods", o.NotMethods},
				{"paths", o.Paths}, {"notPaths", o.NotPaths}, {"hosts", o.Hosts}, {"notHosts", o.NotHosts}} {
				if err := validPatterns(of+"."+l.name, l.vs); err != nil {
					return err
				}
			}
			for name, ports := range map[string][]string{"ports": o.Ports, "notPorts": o.NotPorts} {
				for k, port := range ports {
					if n, err := strconv.Atoi(port); err == nil && (n < 1 || n > 65535) {
						return fieldErr(fmt.Sprintf("%s.%s[%d]", of, name, k), "%d is not within 1 and 65535", n)
					}
				}
			}
			for k := range o.Methods {
				o.Methods[k] = strings.ToUpper(o.Methods[k])
			}
			for k := range o.NotMethods {
				o.NotMethods[k] = strings.ToUpper(o.NotMethods[k])
			}
			for k, t := range o.Publish {
				if err := ValidTopicFilter(t); err != nil {
					return fieldErr(fmt.Sprintf("%s.publish[%d]", of, k), "%v", err)
				}
			}
			for k, t := range o.Subscribe {
				if err := ValidTopicFilter(t); err != nil {
					return fieldErr(fmt.Sprintf("%s.subscribe[%d]", of, k), "%v", err)
				}
			}
		}
		for j, c := range r.When {
			cf := fmt.Sprintf("%s.when[%d]", f, j)
			switch c.Key {
			case "source.principal", "source.namespace", "source.node", "destination.port":
			default:
				name, ok := HeaderConditionName(c.Key)
				if !ok {
					return fieldErr(cf+".key", "%q is not one of request.headers[<name>], source.principal, source.namespace, source.node, destination.port", c.Key)
				}
				if name != AuthorityHeader && strings.HasPrefix(name, ":") {
					return fieldErr(cf+".key", "%q: pseudo-header %s is not supported (only :authority, the same as host); match methods and paths with to.operation methods and paths", c.Key, name)
				}
			}
			if len(c.Values) == 0 && len(c.NotValues) == 0 {
				return fieldErr(cf+".values", "values or notValues is required")
			}
			if err := validPatterns(cf+".values", c.Values); err != nil {
				return err
			}
			if err := validPatterns(cf+".notValues", c.NotValues); err != nil {
				return err
			}
		}
	}
	return nil
}

// validPatterns checks match strings: non-empty, printable, at most one
// '*', and only at the start or the end.
func validPatterns(field string, vs []string) error {
	for i, v := range vs {
		f := fmt.Sprintf("%s[%d]", field, i)
		switch {
		case v == "":
			return fieldErr(f, "must not be empty")
		case len(v) > 1024:
			return fieldErr(f, "longer than 1024 bytes")
		case !utf8.ValidString(v) || strings.IndexFunc(v, unicode.IsControl) >= 0:
			return fieldErr(f, "must be printable UTF-8")
		case strings.Count(v, "*") > 1 || strings.Contains(v, "*") && v[0] != '*' && v[len(v)-1] != '*':
			return fieldErr(f, "%q: '*' may only stand alone, at the start (suffix match) or at the end (prefix match)", v)
		}
	}
	return nil
}

// ValidTopicFilter checks an MQTT topic filter: non-empty UTF-8 without
// NUL, at most 65535 bytes, '+' only as a whole level, '#' only as the
// whole last level.
func ValidTopicFilter(f string) error {
	if f == "" {
		return fmt.Errorf("empty topic filter")
	}
	if len(f) > 65535 || !utf8.ValidString(f) || strings.IndexByte(f, 0) >= 0 {
		return fmt.Errorf("topic filter %q is not valid UTF-8 of at most 65535 bytes without NUL", f)
	}
	levels := strings.Split(f, "/")
	for i, l := range levels {
		if strings.ContainsAny(l, "+#") && len(l) > 1 {
			return fmt.Errorf("topic filter %q: '+' and '#' must stand alone in a level", f)
		}
		if l == "#" && i != len(levels)-1 {
			return fmt.Errorf("topic filter %q: '#' must be the last level", f)
		}
	}
	return nil
}
