package syncproto

// The control plane's end of a sync stream.
//
// States and transitions (one Control per stream; an Output with Err ends
// it, after its frames are sent):
//
//	AwaitHello ──hello──▶ Admitting       effect Admit{node, trust}; the driver checks what
//	                                      needs its state (revoked, site, registration) and
//	                                      steps Admitted or Reject
//	AwaitHello ──not hello, no node──▶ Closed         send error; effect BadFrame
//	AwaitHello ──other protocol──▶ Closed             send error
//	AwaitHello ──no CapPolicy2──▶ Closed              send error; effect OldAgent (an older agent
//	                                                  would enforce wider rules than written)
//	AwaitHello ──invalid node / other cert──▶ Closed  send error (Unauthorized for the cert)
//	Admitting ──Admitted──▶ Streaming     send welcome{version, storeId, heartbeatMillis,
//	                                      features, auditSeq, auditHash}
//	Admitting ──Reject──▶ Closed          send error (if it has a reason)
//	Streaming ──subscribe──▶ Streaming    effect Subscribed{filter, full, known}: full when the
//	                                      agent's store ID is not this store's (a restarted or
//	                                      other control plane) or it knows nothing (version 0)
//	Streaming ──later subscribe──▶ Streaming   if welcome listed FeatureScopeAdd: effect
//	                                      ScopeAdd{its scope's services}; the driver widens
//	                                      the subscription and answers with an update whose
//	                                      ScopeAdded names the entries; without the feature (or
//	                                      with other fields: types, region, storeId,
//	                                      knownVersion) it ends the stream
//	Streaming ──ack / nack──▶ Streaming   effect Acked / Nacked (after a NACK the agent
//	                                      reconnects and resubscribes from version 0)
//	Streaming ──heartbeat──▶ Streaming    effect Heartbeat{load, valid loads, valid stats}; the driver
//	                                      answers with Send(heartbeat{others' loads})
//	Streaming ──sessions──▶ Streaming     effect SessionsIn{valid, refused}
//	Streaming ──local / audit / renew / svid──▶ Streaming   effect for the driver, which
//	                                      answers with Send (auditAck, cert, svidIssued, error)
//	Streaming ──anything else──▶ Closed   effect BadFrame; "unexpected …"
//	Streaming ──Send(update)──▶           send it with the next nonce; only after subscribe;
//	                                      in chunks 1..n with that nonce if it exceeds the
//	                                      chunk budget and the agent named CapChunks (chunk.go)
//	Streaming ──Send(trust)──▶            only if the agent named CapTrust
//	Streaming ──Send(heartbeat|auditAck|cert|svidIssued|error)──▶ send it

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// Control events: the argument of Control.Step, besides Recv and Send.
type (
	// Admitted: the driver's checks passed; welcome with these values.
	Admitted struct {
		Version   uint64 // the store's revision
		StoreID   string
		Features  []string
		AuditSeq  uint64
		AuditHash string
	}
	// Reject: the driver refused the node; Reason (if set) goes to the
	// agent in an error frame, Err ends the stream.
	Reject struct {
		Reason string
		Err    error
	}
)

// Control effects: in Output.Effects.
type (
	// Admit: a well-formed hello from an agent that may be served. Trust:
	// it named CapTrust.
	Admit struct {
		Node  *api.Node
		Trust bool
	}
	// Subscribed: start sending updates matching Filter: a snapshot if
	// Full, else what changed after Known.
	Subscribed struct {
		Filter Filter
		Full   bool
		Known  uint64
	}
	// ScopeAdd: a later subscribe adds these scope entries (unchecked:
	// Filter.Widen takes the valid ones, up to MaxScopeServices).
	ScopeAdd struct{ Services []string }
	// Acked: the agent applied the update of Version.
	Acked struct{ Version uint64 }
	// Nacked: the agent refused an update.
	Nacked struct {
		Nonce   string
		Version uint64
		Error   string
	}
	// Heartbeat: record the agent's load (EndpointLoad cleaned by
	// ValidLoads) and answer with the others' load.
	Heartbeat struct {
		Load         float64
		EndpointLoad map[string]float64
		Paths        []wire.PathReport // ValidPaths
		// VIPBindFailures: ValidVIPBindFailures.
		VIPBindFailures []api.VIPBindFailure
		// Stats: ValidStats (nil: the agent sent none).
		Stats *wire.StatsReport
	}
	// SessionsIn: bindings to store; Refused says why the others were
	// dropped.
	SessionsIn struct {
		Valid   []api.Session
		Refused []error
	}
	// LocalIn: the endpoints the agent owns now.
	LocalIn struct{ Endpoints []api.Endpoint }
	// AuditIn, RenewIn, SVIDIn: requests to answer with Send.
	AuditIn struct{ Msg *wire.Message }
	RenewIn struct{ Msg *wire.Message }
	SVIDIn  struct{ Msg *wire.Message }
	// BadFrame counts a malformed or unexpected frame; OldAgent an agent
	// refused for a missing capability; Unauthorized a hello that does not
	// match the client certificate.
	BadFrame     struct{}
	OldAgent     struct{}
	Unauthorized struct{}
)

// PeerNode is the node and site the client certificate names (the TLS
// peer).
type PeerNode struct{ Site, Node string }

type controlState int

const (
	controlAwaitHello controlState = iota
	controlAdmitting
	controlStreaming
	controlClosed
)

var controlStateNames = [...]string{"AwaitHello", "Admitting", "Streaming", "Closed"}

func (s controlState) String() string { return controlStateNames[s] }

// Control is the control plane's end of one sync stream. Not safe for
// concurrent use: the driver steps it under its own lock.
type Control struct {
	peer *PeerNode // nil in insecure mode
	hb   time.Duration

	state      controlState
	node       string
	trust      bool   // the agent named CapTrust
	chunks     bool   // the agent named CapChunks
	storeID    string // this control plane's, from Admitted
	subscribed bool
	scopeAdd   bool // welcome listed FeatureScopeAdd
	nonce      uint64
	limits     Limits
}

// NewControl returns the machine for a new stream whose client certificate
// names peer (nil in insecure mode: no certificate); hb is the heartbeat
// interval agents are told to keep.
func NewControl(peer *PeerNode, hb time.Duration) *Control {
	return &Control{peer: peer, hb: hb, limits: DefaultLimits}
}

// SetLimits replaces the bounds of chunked updates (DefaultLimits).
func (c *Control) SetLimits(l Limits) { c.limits = l }

// State names the current state (for logs and tests).
func (c *Control) State() string { return c.state.String() }

// Node is the node the hello named (empty before).
func (c *Control) Node() string { return c.node }

// ReadTimeout bounds the wait for every frame, heartbeats included, so a
// silent or slow sender is dropped.
func (c *Control) ReadTimeout() time.Duration { return readTimeout(c.hb) }

// Step feeds one event (Recv, Admitted, Reject, Send) and returns what to
// send and do. Effects are Admit, Subscribed, Acked, Nacked, Heartbeat,
// SessionsIn, LocalIn, AuditIn, RenewIn, SVIDIn, BadFrame, OldAgent and
// Unauthorized.
func (c *Control) Step(ev Event) (out Output) {
	if c.state == controlClosed {
		return Output{Err: fmt.Errorf("sync: %T on a closed stream", ev)}
	}
	defer func() {
		if out.Err != nil {
			c.state = controlClosed
		}
	}()
	switch ev := ev.(type) {
	case Recv:
		if ev.Msg == nil {
			return Output{Err: errors.New("sync: nil frame")}
		}
		switch c.state {
		case controlAwaitHello:
			return c.hello(ev.Msg)
		case controlStreaming:
			return c.recv(ev.Msg)
		}
		return Output{Effects: []Effect{BadFrame{}}, Err: fmt.Errorf("node %s: %s before welcome", c.node, describe(ev.Msg))}
	case Admitted:
		if c.state != controlAdmitting {
			return Output{Err: fmt.Errorf("sync: admitted in state %s", c.state)}
		}
		c.state, c.storeID = controlStreaming, ev.StoreID
		c.scopeAdd = slices.Contains(ev.Features, wire.FeatureScopeAdd)
		return send(&wire.Message{Type: wire.TypeWelcome, Version: ev.Version, StoreID: ev.StoreID,
			HeartbeatMillis: c.hb.Milliseconds(), Features: ev.Features, AuditSeq: ev.AuditSeq, AuditHash: ev.AuditHash})
	case Reject:
		err := ev.Err
		if err == nil {
			err = errors.New(ev.Reason)
		}
		out := Output{Err: err}
		if ev.Reason != "" {
			out.Send = []*wire.Message{{Type: wire.TypeError, Error: ev.Reason}}
		}
		return out
	case Send:
		return c.send(ev.Msg, ev.Sizes)
	}
	return Output{Err: fmt.Errorf("sync: unknown control event %T", ev)}
}

// refuse answers hello with an error frame and ends the stream.
func refuse(reason string, err error, effects ...Effect) Output {
	return Output{Send: []*wire.Message{{Type: wire.TypeError, Error: reason}}, Effects: effects, Err: err}
}

func (c *Control) hello(m *wire.Message) Output {
	if m.Type != wire.TypeHello || m.Node == nil {
		return refuse("first message must be hello with a node", errors.New("no hello"), BadFrame{})
	}
	if m.Protocol != wire.ProtocolVersion {
		return refuse(fmt.Sprintf("protocol %d not supported (want %d)", m.Protocol, wire.ProtocolVersion),
			fmt.Errorf("protocol %d", m.Protocol))
	}
	if !slices.Contains(m.Capabilities, wire.CapPolicy2) {
		// An older agent would drop the fields that narrow routes and
		// policies (a mesh-wide DENY, a route without default) and enforce
		// wider rules than the documents say: refuse it rather than widen.
		return refuse("agent too old for this control plane: upgrade it (it keeps serving from its cache meanwhile)",
			errors.New("agent without capability "+wire.CapPolicy2), OldAgent{})
	}
	if err := m.Node.Validate(); err != nil {
		return refuse("node: "+err.Error(), fmt.Errorf("hello node: %w", err))
	}
	c.node = m.Node.Meta.Name
	if c.peer != nil && (c.peer.Node != c.node || c.peer.Site != m.Node.Spec.Site) {
		return refuse(fmt.Sprintf("certificate is for node %s of site %s, hello names %s of site %s", c.peer.Node, c.peer.Site, c.node, m.Node.Spec.Site),
			fmt.Errorf("hello node %s does not match certificate for node %s of site %s", c.node, c.peer.Node, c.peer.Site), Unauthorized{})
	}
	c.state, c.trust = controlAdmitting, slices.Contains(m.Capabilities, wire.CapTrust)
	c.chunks = slices.Contains(m.Capabilities, wire.CapChunks)
	return Output{Effects: []Effect{Admit{Node: m.Node, Trust: c.trust}}}
}

func (c *Control) recv(m *wire.Message) Output {
	var eff Effect
	switch m.Type {
	case wire.TypeSubscribe:
		if c.subscribed {
			if !c.scopeAdd || m.Scope == nil || m.Scope.Region != "" || len(m.Types) > 0 || m.StoreID != "" || m.KnownVersion != 0 {
				return Output{Err: fmt.Errorf("node %s: second subscribe on one stream", c.node)}
			}
			if len(m.Scope.Services) > MaxScopeServices {
				// A scope is bounded as a whole (the agent drops to
				// everything past 1,000 entries); one addition this large
				// is a peer holding the control plane's memory.
				return Output{Err: fmt.Errorf("node %s: a later subscribe adds %d scope entries (at most %d)", c.node, len(m.Scope.Services), MaxScopeServices)}
			}
			return Output{Effects: []Effect{ScopeAdd{m.Scope.Services}}}
		}
		c.subscribed = true
		eff = Subscribed{Filter: NewFilter(m), Full: m.StoreID != c.storeID || m.KnownVersion == 0, Known: m.KnownVersion}
	case wire.TypeAck:
		eff = Acked{m.Version}
	case wire.TypeNack:
		eff = Nacked{Nonce: m.Nonce, Version: m.Version, Error: m.Error}
	case wire.TypeHeartbeat:
		eff = Heartbeat{Load: m.Load, EndpointLoad: ValidLoads(m.EndpointLoad), Paths: ValidPaths(m.Paths),
			VIPBindFailures: ValidVIPBindFailures(m.VIPBindFailures), Stats: ValidStats(m.Stats)}
	case wire.TypeSessions:
		in := SessionsIn{Valid: make([]api.Session, 0, len(m.Sessions))}
		for _, s := range m.Sessions {
			if err := s.Validate(); err != nil {
				in.Refused = append(in.Refused, err)
				continue
			}
			in.Valid = append(in.Valid, s)
		}
		eff = in
	case wire.TypeLocal:
		eff = LocalIn{m.Endpoints}
	case wire.TypeAudit:
		eff = AuditIn{m}
	case wire.TypeRenew:
		eff = RenewIn{m}
	case wire.TypeSVID:
		eff = SVIDIn{m}
	default:
		return Output{Effects: []Effect{BadFrame{}}, Err: fmt.Errorf("node %s: unexpected %s", c.node, m.Type)}
	}
	return Output{Effects: []Effect{eff}}
}

// send checks a frame the driver sends: updates only after subscribe (each
// gets the next nonce), trust only to an agent that named CapTrust.
func (c *Control) send(m *wire.Message, sizes []int) Output {
	if m == nil {
		return Output{Err: errors.New("sync: send nil frame")}
	}
	if c.state != controlStreaming {
		return Output{Err: fmt.Errorf("sync: send %s before welcome", m.Type)}
	}
	switch m.Type {
	case wire.TypeUpdate:
		if !c.subscribed {
			return Output{Err: errors.New("sync: update before subscribe")}
		}
		if m.Chunk != 0 || m.Chunks != 0 {
			return Output{Err: errors.New("sync: the driver sends whole updates; the machine chunks them")}
		}
		c.nonce++
		m.Nonce = strconv.FormatUint(c.nonce, 10)
		if !c.chunks {
			return send(m)
		}
		chunks, err := SplitUpdateSized(m, c.limits, sizes)
		if err != nil {
			return Output{Err: err}
		}
		return send(chunks...)
	case wire.TypeTrust:
		if !c.trust {
			return Output{Err: fmt.Errorf("sync: trust to node %s, which did not name capability %s", c.node, wire.CapTrust)}
		}
	case wire.TypeHeartbeat, wire.TypeAuditAck, wire.TypeCert, wire.TypeSVIDIssued, wire.TypeError:
	default:
		return Output{Err: fmt.Errorf("sync: the control plane does not send %s on a stream", m.Type)}
	}
	return send(m)
}
