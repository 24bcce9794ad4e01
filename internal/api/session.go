package api

import (
	"crypto/sha256"
	"encoding/hex"
)

// KindSession is a session binding: a session key pinned to an endpoint.
const KindSession = "Session"

// Session binds one session key of a service to an endpoint. Agents create
// them on a session's first request and share them through the control
// plane, so a client that moves to another site (its requests now enter
// through another agent) keeps its instance. `fogmesh session move` (or
// applying a Session) moves it.
type Session struct {
	APIVersion string      `json:"apiVersion,omitempty"`
	Kind       string      `json:"kind,omitempty"`
	Meta       Meta        `json:"metadata"`
	Spec       SessionSpec `json:"spec"`
}

// SessionSpec is the binding.
type SessionSpec struct {
	Service  string `json:"service"`
	Key      string `json:"key"`      // the session key (header or cookie value)
	Endpoint string `json:"endpoint"` // endpoint name in the service's namespace
}

// SessionAffinity on a service: where the session key comes from, and what
// happens when the client moves.
type SessionAffinity struct {
	Header string `json:"header,omitempty"` // e.g. x-session-id
	Cookie string `json:"cookie,omitempty"` // used when Header is empty or absent
	// Policy: "stay" (default) keeps the bound instance while it is
	// healthy, wherever the client is; "nearest" rebinds to an instance in a
	// nearer locality tier when the client's new agent has one.
	Policy string `json:"policy,omitempty"`
}

func (s *Session) GetMeta() *Meta { return &s.Meta }
func (*Session) GetKind() string  { return KindSession }

// SessionName is the object name of a service's session key: keys are free
// text, names are DNS labels.
func SessionName(service, key string) string {
	h := sha256.Sum256([]byte(service + "\x00" + key))
	return "s-" + hex.EncodeToString(h[:12])
}

// Validate checks a session binding.
func (s *Session) Validate() error {
	s.APIVersion, s.Kind = APIVersion, KindSession
	s.Meta.Namespace = NamespaceOr(s.Meta.Namespace)
	if err := validName("spec.service", s.Spec.Service); err != nil {
		return err
	}
	if s.Spec.Key == "" || len(s.Spec.Key) > 256 {
		return fieldErr("spec.key", "required, at most 256 bytes")
	}
	if err := validName("spec.endpoint", s.Spec.Endpoint); err != nil {
		return err
	}
	if s.Meta.Name == "" {
		s.Meta.Name = SessionName(s.Spec.Service, s.Spec.Key)
	}
	if s.Meta.Name != SessionName(s.Spec.Service, s.Spec.Key) {
		return fieldErr("metadata.name", "must be empty or %s (derived from service and key)", SessionName(s.Spec.Service, s.Spec.Key))
	}
	return validName("metadata.namespace", s.Meta.Namespace)
}
