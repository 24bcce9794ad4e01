package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"sigs.k8s.io/yaml"
)

// Object is any fogmesh resource.
type Object interface {
	// GetMeta returns the object's metadata; callers may modify it.
	GetMeta() *Meta
	// GetKind returns Node, Service or Endpoint.
	GetKind() string
	// Validate checks fields and fills defaults; the error names the field.
	Validate() error
}

func (n *Node) GetMeta() *Meta     { return &n.Meta }
func (s *Service) GetMeta() *Meta  { return &s.Meta }
func (e *Endpoint) GetMeta() *Meta { return &e.Meta }
func (*Node) GetKind() string      { return KindNode }
func (*Service) GetKind() string   { return KindService }
func (*Endpoint) GetKind() string  { return KindEndpoint }

// MaxDocumentBytes bounds what Decode accepts.
const MaxDocumentBytes = 4 << 20

// ObjectKey is the store key of an object: "Kind/namespace/name" (nodes have
// no namespace: "Node/name").
func ObjectKey(o Object) string {
	m := o.GetMeta()
	if o.GetKind() == KindNode {
		return KindNode + "/" + m.Name
	}
	return o.GetKind() + "/" + NamespaceOr(m.Namespace) + "/" + m.Name
}

var yamlSep = regexp.MustCompile(`(?m)^---[ \t]*(#.*)?$`)

// Decode parses one or more documents: a JSON object, a JSON array of
// objects, a JSON/YAML List ({"kind":"List","items":[...]}), or YAML
// documents separated by "---". Every object is validated; the first error
// names the document and the field, and no object is returned with it.
func Decode(data []byte) ([]Object, error) {
	objs, _, err := DecodeWithWarnings(data)
	return objs, err
}

// DecodeWithWarnings is Decode, also returning a warning for every field of
// an Istio document that fogmesh does not support (and so ignores).
func DecodeWithWarnings(data []byte) ([]Object, []string, error) {
	return DecodeWithOptions(data, DecodeOptions{})
}

// DecodeOptions are settings of the mesh that translating Istio documents
// depends on.
type DecodeOptions struct {
	// IstioRootNamespace is Istio's meshConfig.rootNamespace: an
	// AuthorizationPolicy there applies to the whole mesh (default
	// IstioRootNamespace, "istio-system").
	IstioRootNamespace string
}

// DecodeWithOptions is DecodeWithWarnings with the mesh's settings.
func DecodeWithOptions(data []byte, opts DecodeOptions) ([]Object, []string, error) {
	if len(data) > MaxDocumentBytes {
		return nil, nil, fmt.Errorf("document is %d bytes, more than the limit of %d", len(data), MaxDocumentBytes)
	}
	var raws []json.RawMessage
	trimmed := bytes.TrimSpace(data)
	switch {
	case len(trimmed) == 0:
		return nil, nil, errors.New("empty document")
	case trimmed[0] == '[':
		if err := json.Unmarshal(trimmed, &raws); err != nil {
			return nil, nil, fmt.Errorf("json: %w", err)
		}
	case trimmed[0] == '{':
		raws = []json.RawMessage{trimmed}
	default:
		for i, part := range yamlSep.Split(string(data), -1) {
			if strings.TrimSpace(stripComments(part)) == "" {
				continue
			}
			j, err := yaml.YAMLToJSON([]byte(part))
			if err != nil {
				return nil, nil, fmt.Errorf("document %d: yaml: %w", i+1, err)
			}
			raws = append(raws, j)
		}
	}
	// Expand Lists.
	var flat []json.RawMessage
	for _, r := range raws {
		var l struct {
			Kind  string            `json:"kind"`
			Items []json.RawMessage `json:"items"`
		}
		if json.Unmarshal(r, &l) == nil && l.Kind == "List" {
			flat = append(flat, l.Items...)
			continue
		}
		flat = append(flat, r)
	}
	if len(flat) == 0 {
		return nil, nil, errors.New("no objects in document")
	}
	var out []Object
	var warnings []string
	for i, r := range flat {
		if isIstio(r) {
			objs, warns, err := decodeIstio(r, opts)
			if err != nil {
				return nil, nil, fmt.Errorf("document %d%s: %w", i+1, describe(r), err)
			}
			for _, w := range warns {
				warnings = append(warnings, fmt.Sprintf("document %d%s: %s", i+1, describe(r), w))
			}
			out = append(out, objs...)
			continue
		}
		o, err := DecodeObject(r)
		if err != nil {
			return nil, nil, fmt.Errorf("document %d%s: %w", i+1, describe(r), err)
		}
		if w := hashKeyWarning(r); w != "" {
			warnings = append(warnings, fmt.Sprintf("document %d%s: %s", i+1, describe(r), w))
		}
		out = append(out, o)
	}
	if err := checkUDPRoutes(out); err != nil {
		return nil, nil, err
	}
	return out, warnings, nil
}

// hashKeyWarning says what a hashing balancer without a hashKey keys on:
// Validate fills {sourceIP} (and mqttClientID on mqtt ports), which pins
// every client behind one NAT address to one endpoint and ignores the
// header or cookie the operator may have meant. Istio's consistentHash
// names its key, so applying one without it is accepted with this warning
// rather than silently (docs/istio.md).
func hashKeyWarning(r json.RawMessage) string {
	var h struct {
		Kind string `json:"kind"`
		Spec struct {
			Balancer string          `json:"balancer"`
			HashKey  json.RawMessage `json:"hashKey"`
		} `json:"spec"`
	}
	if json.Unmarshal(r, &h) != nil || h.Kind != KindService || len(h.Spec.HashKey) > 0 {
		return ""
	}
	if h.Spec.Balancer != "consistent-hash" && h.Spec.Balancer != "maglev" {
		return ""
	}
	return fmt.Sprintf("spec.hashKey: not set: balancer %s hashes the client's source IP (and the client id on mqtt ports); set spec.hashKey (header, cookie, sourceIP or mqttClientID) to choose", h.Spec.Balancer)
}

func stripComments(s string) string {
	var b strings.Builder
	for _, line := range strings.Split(s, "\n") {
		if t := strings.TrimSpace(line); t != "" && !strings.HasPrefix(t, "#") {
			b.WriteString(line)
			b.WriteByte('\n')
		}
	}
	return b.String()
}

// describe returns " (Kind ns/name)" for error messages, best effort.
func describe(r json.RawMessage) string {
	var h struct {
		Kind string `json:"kind"`
		Meta Meta   `json:"metadata"`
	}
	if json.Unmarshal(r, &h) != nil || h.Kind == "" {
		return ""
	}
	if h.Meta.Name == "" {
		return " (" + h.Kind + ")"
	}
	return " (" + h.Kind + " " + h.Meta.Key() + ")"
}

// DecodeObject decodes and validates one JSON object. Unknown fields are
// errors, so a typo is never silently dropped.
func DecodeObject(r []byte) (Object, error) {
	var h struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := json.Unmarshal(r, &h); err != nil {
		return nil, fmt.Errorf("json: %w", err)
	}
	if h.APIVersion != APIVersion {
		return nil, fieldErr("apiVersion", "%q is not supported (want %q)", h.APIVersion, APIVersion)
	}
	var o Object
	switch h.Kind {
	case KindNode:
		o = new(Node)
	case KindService:
		o = new(Service)
	case KindEndpoint:
		o = new(Endpoint)
	case KindRoute:
		o = new(Route)
	case KindDestinationPolicy:
		o = new(DestinationPolicy)
	case KindSession:
		o = new(Session)
	case KindAuthorizationPolicy:
		o = new(AuthorizationPolicy)
	case "":
		return nil, fieldErr("kind", "required")
	default:
		return nil, fieldErr("kind", "%q is not one of Node, Service, Endpoint, Route, DestinationPolicy, Session, AuthorizationPolicy", h.Kind)
	}
	dec := json.NewDecoder(bytes.NewReader(r))
	dec.DisallowUnknownFields()
	if err := dec.Decode(o); err != nil {
		if fe := LocateDecodeError(r, o); fe != nil {
			return nil, fe // with the full path: spec.ports[0].bogus
		}
		return nil, jsonFieldError(err)
	}
	if dec.More() {
		return nil, errors.New("trailing data after object")
	}
	if err := o.Validate(); err != nil {
		return nil, err
	}
	return o, nil
}

// jsonFieldError turns encoding/json errors into FieldErrors where it can.
func jsonFieldError(err error) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field != "" {
		return fieldErr(te.Field, "cannot use a JSON %s here (want %s)", te.Value, te.Type)
	}
	if s := err.Error(); strings.HasPrefix(s, "json: unknown field ") {
		return fieldErr(strings.Trim(strings.TrimPrefix(s, "json: unknown field "), `"`), "unknown field")
	}
	return fmt.Errorf("json: %w", err)
}
