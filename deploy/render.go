package deploy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"

	"sigs.k8s.io/yaml"
)

// Options choose what Render changes in the base; the zero value prints
// the base as it is.
type Options struct {
	// Namespace of the control plane and agents (default fogmesh).
	Namespace string
	// AgentImage and ControlImage are image references (default
	// ghcr.io/fogmesh/fogmesh-agent:latest and ghcr.io/fogmesh/fogmesh:latest).
	AgentImage, ControlImage string
	// Sites: one agent DaemonSet per site, on the nodes labelled
	// fogmesh.io/site=SITE, each agent joining with -site SITE (default
	// one site, "default"). The DaemonSet of site "default" is named
	// fogmesh-agent, the others fogmesh-agent-SITE.
	Sites []string
	// ControlAddr is the sync address the agents dial (default
	// fogmesh-control.NAMESPACE.svc:7071); edge nodes that cannot reach
	// cluster Services give a reachable host:port here.
	ControlAddr string
	// JoinSecret is the Secret whose key NODE holds node NODE's one-time
	// join token (default fogmesh-join).
	JoinSecret string
	// NoCapture runs the agents without transparent capture: as the
	// non-root user 65532 with no capabilities, on virtual IPs only.
	NoCapture bool
}

const (
	defaultNamespace = "fogmesh"
	defaultSite      = "default"
	siteLabel        = "fogmesh.io/site"
	// DefaultAgentImage and DefaultControlImage are the base's images.
	DefaultAgentImage   = "ghcr.io/fogmesh/fogmesh-agent:latest"
	DefaultControlImage = "ghcr.io/fogmesh/fogmesh:latest"
)

var (
	labelRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
	imageRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$`)
	hostRE  = regexp.MustCompile(`^[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}$`)
	// subdomainRE is a Secret's name.
	subdomainRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`)
	// docSepRE separates the documents of a YAML file.
	docSepRE = regexp.MustCompile(`(?m)^---\s*$`)
	// controlHostRE is the base's name of the control plane Service in
	// its namespace, in the agents' -control and the server names.
	controlHostRE = regexp.MustCompile(`\bfogmesh-control\.fogmesh\b`)
)

func (o *Options) validate() error {
	if o.Namespace == "" {
		o.Namespace = defaultNamespace
	}
	if !labelRE.MatchString(o.Namespace) {
		return fmt.Errorf("namespace %q is not a DNS label", o.Namespace)
	}
	if o.AgentImage == "" {
		o.AgentImage = DefaultAgentImage
	}
	if o.ControlImage == "" {
		o.ControlImage = DefaultControlImage
	}
	for _, im := range []string{o.AgentImage, o.ControlImage} {
		if !imageRE.MatchString(im) {
			return fmt.Errorf("image %q is not an image reference", im)
		}
	}
	if len(o.Sites) == 0 {
		o.Sites = []string{defaultSite}
	}
	seen := map[string]bool{}
	for _, s := range o.Sites {
		if !labelRE.MatchString(s) {
			return fmt.Errorf("site %q is not a DNS label", s)
		}
		if seen[s] {
			return fmt.Errorf("site %q given twice", s)
		}
		seen[s] = true
	}
	if o.ControlAddr == "" {
		o.ControlAddr = "fogmesh-control." + o.Namespace + ".svc:7071"
	}
	if !hostRE.MatchString(o.ControlAddr) {
		return fmt.Errorf("control address %q is not host:port", o.ControlAddr)
	}
	if o.JoinSecret == "" {
		o.JoinSecret = "fogmesh-join"
	}
	if len(o.JoinSecret) > 253 || !subdomainRE.MatchString(o.JoinSecret) {
		return fmt.Errorf("join secret %q is not a DNS subdomain", o.JoinSecret)
	}
	return nil
}

// Object is one manifest, as its JSON decoding.
type Object = map[string]any

// Objects returns the base's objects changed as o says.
func Objects(o Options) ([]Object, error) {
	if err := o.validate(); err != nil {
		return nil, fmt.Errorf("install: %w", err)
	}
	var out []Object
	for _, f := range Files {
		b, err := fsys.ReadFile(f)
		if err != nil {
			return nil, err
		}
		objs, err := split(b)
		if err != nil {
			return nil, fmt.Errorf("deploy/%s: %w", f, err)
		}
		for _, obj := range objs {
			changed, err := apply(obj, o)
			if err != nil {
				return nil, fmt.Errorf("deploy/%s: %w", f, err)
			}
			out = append(out, changed...)
		}
	}
	return out, nil
}

// Render writes the objects as one YAML stream for kubectl apply -f -.
func Render(w io.Writer, o Options) error {
	objs, err := Objects(o)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	buf.WriteString("# fogmesh: kubectl apply -f - (printed by fogmesh install)\n")
	for i, obj := range objs {
		if i > 0 {
			buf.WriteString("---\n")
		}
		b, err := yaml.Marshal(obj)
		if err != nil {
			return err
		}
		buf.Write(b)
	}
	_, err = w.Write(buf.Bytes())
	return err
}

// split decodes a multi-document YAML file.
func split(b []byte) ([]Object, error) {
	var out []Object
	for _, doc := range docSepRE.Split(string(b), -1) {
		var obj Object
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			return nil, err
		}
		if obj != nil {
			out = append(out, obj)
		}
	}
	return out, nil
}

// apply changes one base object; the agent DaemonSet becomes one per site.
func apply(obj Object, o Options) ([]Object, error) {
	kind, _ := obj["kind"].(string)
	md, _ := obj["metadata"].(map[string]any)
	if md == nil {
		return nil, errors.New("object without metadata")
	}
	if _, ok := md["namespace"]; ok {
		md["namespace"] = o.Namespace
	}
	walkStrings(obj, func(s string) string {
		s = strings.ReplaceAll(s, "fogmesh-control.fogmesh.svc:7071", o.ControlAddr)
		return controlHostRE.ReplaceAllString(s, "fogmesh-control."+o.Namespace)
	})
	switch kind {
	case "Namespace":
		md["name"] = o.Namespace
	case "ClusterRoleBinding":
		for _, s := range list(obj["subjects"]) {
			if m, ok := s.(map[string]any); ok {
				m["namespace"] = o.Namespace
			}
		}
	case "Deployment":
		for _, c := range containers(obj) {
			c["image"] = o.ControlImage
		}
	case "DaemonSet":
		var out []Object
		for _, site := range o.Sites {
			ds, err := deepCopy(obj)
			if err != nil {
				return nil, err
			}
			if err := agentFor(ds, site, o); err != nil {
				return nil, err
			}
			out = append(out, ds)
		}
		return out, nil
	}
	return []Object{obj}, nil
}

// agentFor makes the base DaemonSet site's.
func agentFor(ds Object, site string, o Options) error {
	name := "fogmesh-agent"
	if site != defaultSite {
		name += "-" + site
	}
	ds["metadata"].(map[string]any)["name"] = name
	walkMaps(ds, func(m map[string]any) {
		if _, ok := m[siteLabel]; ok {
			m[siteLabel] = site
		}
	})
	cs := containers(ds)
	if len(cs) != 1 {
		return fmt.Errorf("agent DaemonSet: %d containers, want 1", len(cs))
	}
	c := cs[0]
	c["image"] = o.AgentImage
	var args []any
	for _, a := range list(c["args"]) {
		s, _ := a.(string)
		switch {
		case strings.HasPrefix(s, "-site="):
			s = "-site=" + site
		case strings.HasPrefix(s, "-capture=") && o.NoCapture:
			s = "-capture=off"
		}
		args = append(args, s)
	}
	c["args"] = args
	if o.NoCapture {
		c["securityContext"] = map[string]any{
			"runAsUser": 65532, "runAsGroup": 65532, "runAsNonRoot": true,
			"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
			"capabilities": map[string]any{"drop": []any{"ALL"}},
		}
	}
	spec, _ := ds["spec"].(map[string]any)
	tmpl, _ := spec["template"].(map[string]any)
	pspec, _ := tmpl["spec"].(map[string]any)
	for _, v := range list(pspec["volumes"]) {
		if m, ok := v.(map[string]any); ok {
			if sec, ok := m["secret"].(map[string]any); ok {
				sec["secretName"] = o.JoinSecret
			}
		}
	}
	return nil
}

func containers(obj Object) []map[string]any {
	spec, _ := obj["spec"].(map[string]any)
	tmpl, _ := spec["template"].(map[string]any)
	pspec, _ := tmpl["spec"].(map[string]any)
	var out []map[string]any
	for _, c := range list(pspec["containers"]) {
		if m, ok := c.(map[string]any); ok {
			out = append(out, m)
		}
	}
	return out
}

func list(v any) []any { l, _ := v.([]any); return l }

func deepCopy(obj Object) (Object, error) {
	b, err := yaml.Marshal(obj)
	if err != nil {
		return nil, err
	}
	var out Object
	return out, yaml.Unmarshal(b, &out)
}

// walkStrings replaces every string value (not keys) of v by f's result.
func walkStrings(v any, f func(string) string) {
	switch t := v.(type) {
	case map[string]any:
		for k, e := range t {
			if s, ok := e.(string); ok {
				t[k] = f(s)
			} else {
				walkStrings(e, f)
			}
		}
	case []any:
		for i, e := range t {
			if s, ok := e.(string); ok {
				t[i] = f(s)
			} else {
				walkStrings(e, f)
			}
		}
	}
}

// walkMaps calls f on every map within v.
func walkMaps(v any, f func(map[string]any)) {
	switch t := v.(type) {
	case map[string]any:
		f(t)
		for _, e := range t {
			walkMaps(e, f)
		}
	case []any:
		for _, e := range t {
			walkMaps(e, f)
		}
	}
}
