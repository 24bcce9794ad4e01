package api

import (
	"fmt"
	"sort"
	"strings"
)

// The Istio security adapter: security.istio.io AuthorizationPolicy
// documents become fogmesh AuthorizationPolicies, PeerAuthentication is
// checked against what fogmesh always does (mutual TLS between agents).
//
// A condition fogmesh cannot evaluate (requestPrincipals, ipBlocks,
// a when key it does not know) is never silently dropped: it is warned
// about, and the translation fails closed. In an ALLOW policy the rule
// holding it is dropped (it can never match, so it opens nothing; an ALLOW
// policy left without rules denies everything it selects); in a DENY policy
// only the condition is dropped (the rule then denies more, not less).

// istioTrustDomain is Istio's default trust domain, mapped onto fogmesh's.
const istioTrustDomain = "cluster.local"

// IstioRootNamespace is Istio's default root namespace (meshConfig
// rootNamespace): an AuthorizationPolicy there applies to the whole mesh,
// and is translated to a MeshWide policy. The control plane's
// istioRootNamespace setting changes it (DecodeOptions).
const IstioRootNamespace = "istio-system"

func (w *walker) warnf(format string, args ...any) {
	w.warnings = append(w.warnings, fmt.Sprintf(format, args...))
}

func (w *walker) authorizationPolicy(name, ns string, spec map[string]any) ([]Object, error) {
	p := &AuthorizationPolicy{Meta: Meta{Name: name, Namespace: ns}}
	root := w.opts.IstioRootNamespace
	if root == "" {
		root = IstioRootNamespace
	}
	p.Spec.MeshWide = ns == root
	if sel := cloneMap(obj(spec["selector"])); sel != nil {
		delete(spec, "selector")
		labels := cloneMap(obj(sel["matchLabels"]))
		delete(sel, "matchLabels")
		w.leftovers("spec.selector", sel)
		for _, k := range []string{"app", "service"} {
			v, ok := take[string](labels, k)
			switch {
			case !ok:
			case p.Spec.Service == "":
				p.Spec.Service = v
			case v != p.Spec.Service:
				// Istio selects workloads carrying both labels: no
				// service's; either would widen that service's ALLOWs.
				return nil, fieldErr("spec.selector.matchLabels."+k, "%q and app %q name different services", v, p.Spec.Service)
			}
		}
		if len(labels) > 0 {
			keys := make([]string, 0, len(labels))
			for k := range labels {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			return nil, fieldErr("spec.selector.matchLabels."+keys[0], "only the app or service label selects a destination (a service)")
		}
	}
	for _, k := range []string{"targetRef", "targetRefs"} {
		if _, ok := spec[k]; ok {
			return nil, fieldErr("spec."+k, "is not supported: select the service with selector.matchLabels.app")
		}
	}
	action, _ := take[string](spec, "action")
	switch action {
	case "", "ALLOW":
		p.Spec.Action = ActionAllow
	case "DENY":
		p.Spec.Action = ActionDeny
	case "CUSTOM":
		// An external authorizer may deny what the rules select; fogmesh
		// has none, so it denies all of it: skipping would fail open.
		delete(spec, "provider")
		p.Spec.Action = ActionDeny
		w.warnf("spec.action CUSTOM is not supported (no external authorizer): the requests its rules select are denied")
	case "AUDIT":
		delete(spec, "provider")
		delete(spec, "rules")
		w.warnf("spec.action %s is not supported: the policy is skipped", action)
		return nil, nil
	default:
		return nil, fieldErr("spec.action", "%q is not ALLOW, DENY, CUSTOM or AUDIT", action)
	}
	deny := p.Spec.Action == ActionDeny
	rules, _ := take[[]any](spec, "rules")
	w.leftovers("spec", spec)
	for i, r := range rules {
		rp := fmt.Sprintf("spec.rules[%d]", i)
		rule, keep, err := w.authzRule(rp, cloneMap(obj(r)), ns, deny)
		if err != nil {
			return nil, err
		}
		if keep {
			p.Spec.Rules = append(p.Spec.Rules, rule)
		}
	}
	return []Object{p}, nil
}

// authzRule translates one rule. keep is false when an ALLOW rule holds an
// unsupported condition (see the file comment).
func (w *walker) authzRule(path string, r map[string]any, ns string, deny bool) (AuthzRule, bool, error) {
	var rule AuthzRule
	keep := true
	if r == nil {
		return rule, false, fieldErr(path, "must be an object")
	}
	unsupported := func(field string) {
		if deny {
			w.warnf("%s is not supported and is ignored (this DENY rule matches regardless of it)", field)
		} else {
			w.warnf("%s is not supported", field)
			keep = false
		}
	}
	from, _ := take[[]any](r, "from")
	for j, f := range from {
		fp := fmt.Sprintf("%s.from[%d]", path, j)
		fm := cloneMap(obj(f))
		src := cloneMap(obj(fm["source"]))
		delete(fm, "source")
		w.leftovers(fp, fm)
		var s AuthzSource
		var err error
		if s.Principals, err = istioPrincipals(fp+".source.principals", src, "principals"); err != nil {
			return rule, false, err
		}
		if s.NotPrincipals, err = istioPrincipals(fp+".source.notPrincipals", src, "notPrincipals"); err != nil {
			return rule, false, err
		}
		if s.Namespaces, err = stringList(fp+".source.namespaces", src, "namespaces"); err != nil {
			return rule, false, err
		}
		if s.NotNamespaces, err = stringList(fp+".source.notNamespaces", src, "notNamespaces"); err != nil {
			return rule, false, err
		}
		for _, k := range sortedKeys(src) {
			unsupported(fp + ".source." + k) // requestPrincipals, ipBlocks, remoteIpBlocks and their not-forms
		}
		rule.From = append(rule.From, s)
	}
	to, _ := take[[]any](r, "to")
	for j, t := range to {
		tp := fmt.Sprintf("%s.to[%d]", path, j)
		tm := cloneMap(obj(t))
		op := cloneMap(obj(tm["operation"]))
		delete(tm, "operation")
		w.leftovers(tp, tm)
		var o AuthzOperation
		for _, f := range []struct {
			key string
			dst *[]string
		}{{"methods", &o.Methods}, {"notMethods", &o.NotMethods}, {"paths", &o.Paths}, {"notPaths", &o.NotPaths},
			{"ports", &o.Ports}, {"notPorts", &o.NotPorts}, {"hosts", &o.Hosts}, {"notHosts", &o.NotHosts}} {
			vs, err := stringList(tp+".operation."+f.key, op, f.key)
			if err != nil {
				return rule, false, err
			}
			*f.dst = vs
		}
		for _, k := range sortedKeys(op) {
			unsupported(tp + ".operation." + k)
		}
		methodsGiven := len(o.Methods) > 0
		o.Methods = w.istioMethods(tp+".operation.methods", o.Methods)
		o.NotMethods = w.istioMethods(tp+".operation.notMethods", o.NotMethods)
		if methodsGiven && len(o.Methods) == 0 {
			w.warnf("%s matches no request and is left out", tp)
			continue
		}
		rule.To = append(rule.To, o)
	}
	if len(to) > 0 && len(rule.To) == 0 {
		w.warnf("%s is dropped: it matches no request (as in Istio)", path)
		return rule, false, nil
	}
	when, _ := take[[]any](r, "when")
	for j, c := range when {
		cp := fmt.Sprintf("%s.when[%d]", path, j)
		cm := cloneMap(obj(c))
		key, _ := take[string](cm, "key")
		values, err := stringList(cp+".values", cm, "values")
		if err != nil {
			return rule, false, err
		}
		notValues, err := stringList(cp+".notValues", cm, "notValues")
		if err != nil {
			return rule, false, err
		}
		w.leftovers(cp, cm)
		if key == "source.principal" {
			for _, l := range [][]string{values, notValues} {
				for k := range l {
					l[k] = istioPrincipal(l[k])
				}
			}
		}
		name, header := HeaderConditionName(key)
		if header && name != AuthorityHeader && strings.HasPrefix(name, ":") {
			header = false // :method, :path, :scheme: not evaluated (Validate refuses them)
		}
		switch {
		case header, key == "source.principal", key == "source.namespace", key == "destination.port":
			rule.When = append(rule.When, AuthzCondition{Key: key, Values: values, NotValues: notValues})
		default:
			unsupported(fmt.Sprintf("%s.key %q", cp, key))
		}
	}
	w.leftovers(path, r)
	if !keep {
		w.warnf("%s is dropped: it has a condition fogmesh cannot evaluate, so this ALLOW rule never matches", path)
	}
	return rule, keep, nil
}

// istioMethods keeps the methods that are upper case. Istio matches
// methods case-sensitively and refuses a request whose method is not upper
// case, so "get" matches no request; fogmesh's own policies upper-case
// their methods, which here would widen the rule.
func (w *walker) istioMethods(field string, ms []string) []string {
	var out []string
	for _, m := range ms {
		if m == strings.ToUpper(m) {
			out = append(out, m)
		} else {
			w.warnf("%s %q is not upper case: it matches no request (as in Istio) and is left out", field, m)
		}
	}
	return out
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// stringList takes a list of strings out of m.
func stringList(field string, m map[string]any, key string) ([]string, error) {
	v, ok := m[key]
	if !ok {
		return nil, nil
	}
	delete(m, key)
	l, ok := v.([]any)
	if !ok {
		return nil, fieldErr(field, "must be a list of strings")
	}
	out := make([]string, 0, len(l))
	for i, e := range l {
		s, ok := e.(string)
		if !ok {
			return nil, fieldErr(fmt.Sprintf("%s[%d]", field, i), "must be a string")
		}
		out = append(out, s)
	}
	return out, nil
}

func istioPrincipals(field string, m map[string]any, key string) ([]string, error) {
	l, err := stringList(field, m, key)
	for i := range l {
		l[i] = istioPrincipal(l[i])
	}
	return l, err
}

// istioPrincipal maps an Istio principal (<trust domain>/ns/<ns>/sa/<sa>,
// possibly with a leading or trailing '*') to a SPIFFE ID pattern. Istio's
// default trust domain cluster.local becomes fogmesh's.
func istioPrincipal(p string) string {
	switch {
	case p == "*" || strings.HasPrefix(p, "*") || strings.HasPrefix(p, "spiffe://"):
		return p
	case p == istioTrustDomain || strings.HasPrefix(p, istioTrustDomain+"/"):
		return "spiffe://" + DefaultTrustDomain + strings.TrimPrefix(p, istioTrustDomain)
	}
	return "spiffe://" + p
}

// peerAuthentication accepts what fogmesh does anyway: agents always talk
// mutual TLS to each other, so STRICT is the only mode; others are warned.
func (w *walker) peerAuthentication(spec map[string]any) error {
	delete(spec, "selector") // every workload is STRICT: a narrower selector changes nothing
	if m := cloneMap(obj(spec["mtls"])); m != nil {
		delete(spec, "mtls")
		mode, _ := take[string](m, "mode")
		switch mode {
		case "", "UNSET", "STRICT":
		case "PERMISSIVE", "DISABLE":
			w.warnf("spec.mtls.mode %s cannot weaken fogmesh: traffic between agents is always mutual TLS (STRICT)", mode)
		default:
			return fieldErr("spec.mtls.mode", "%q is not STRICT, PERMISSIVE, DISABLE or UNSET", mode)
		}
		w.leftovers("spec.mtls", m)
	}
	if _, ok := spec["portLevelMtls"]; ok {
		delete(spec, "portLevelMtls")
		w.warnf("spec.portLevelMtls is not supported and is ignored: traffic between agents is always mutual TLS on every port")
	}
	w.leftovers("spec", spec)
	return nil
}
