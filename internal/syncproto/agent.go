package syncproto

// The agent's end of a sync stream.
//
// States and transitions (one Agent lives across streams; Connect starts a
// stream, an Output with Err ends it):
//
//	Idle ──Connect──▶ AwaitWelcome        send hello{protocol, node, capabilities}
//	AwaitWelcome ──welcome──▶ Streaming   send subscribe{storeId, knownVersion, or 0 after a NACK};
//	                                      effect Connected{heartbeat, audit resume point, svid}
//	                                      (the driver then steps Local and Sessions)
//	AwaitWelcome ──error──▶ Closed        "control plane refused: …"
//	AwaitWelcome ──other──▶ Closed        "expected welcome, got …"
//	Streaming ──update──▶ Applying        effect Apply{update}
//	Streaming ──update chunk 1 of n──▶ Receiving   hold it (chunk.go)
//	Receiving ──chunk k<n──▶ Receiving    hold it: same nonce, version, storeId, full, n; k in order
//	Receiving ──chunk n──▶ Applying       effect Apply{the whole update}
//	Streaming/Receiving ──bad chunk──▶ Closed   send nack{nonce, version, error}; the next
//	                                      stream subscribes from version 0, as after a refused
//	                                      Apply (a gap, another update's chunk, another frame
//	                                      between chunks, more than MaxChunks or MaxUpdateBytes)
//	Applying ──Applied(nil)──▶ Streaming  send ack{nonce, version}
//	Applying ──Applied(err)──▶ Closed     send nack{nonce, version, error}; the next
//	                                      stream subscribes from version 0 (full snapshot),
//	                                      since deltas built on the refused one would miss it
//	Streaming ──heartbeat──▶ Streaming    effect PeerLoads (the others' load per endpoint)
//	Streaming ──auditAck──▶ Streaming     effect AuditAck, only while a batch is in flight
//	Streaming ──trust / cert / svidIssued / error──▶ Streaming   effect for the driver
//	Streaming ──anything else──▶ Closed   "unexpected …"
//	Streaming ──Tick──▶ Streaming         send heartbeat{load, endpointLoad, stats (only if
//	                                      welcome listed FeatureStats)}
//	Streaming ──Local / Sessions──▶       send local / sessions
//	Streaming ──Send(renew|audit|svid)──▶ send it; audit only if welcome listed
//	                                      FeatureAudit, svid only with FeatureSVID
//	any ──Widen──▶                        add the entries to the scope (a scoped agent
//	                                      only); Streaming with FeatureScopeAdd: send
//	                                      subscribe{scope: the new entries}; Streaming
//	                                      without it: Closed with ErrRescope (the driver
//	                                      reconnects with the wider scope); otherwise the
//	                                      next subscribe names them
//
// A scoped agent subscribes from version 0 (the control plane sends a scoped
// subscriber its scope anew on every stream; one that predates scopes would
// send a delta of everything on top of a cache of part of it). Apply names
// the scope entries the update answers: every entry of the stream's first
// subscribe for a snapshot, the update's ScopeAdded otherwise.
//
// ReadTimeout says how long the driver may wait for the next frame in the
// current state.

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// Agent events: the argument of Agent.Step.
type (
	// Recv is a frame read from the control plane.
	Recv struct{ Msg *wire.Message }
	// Applied reports the outcome of an Apply effect: nil when the update
	// is in force, else why it was refused.
	Applied struct{ Err error }
	// Tick is the heartbeat timer firing, with the load to report.
	Tick struct {
		Load         float64
		EndpointLoad map[string]float64
		Paths        []wire.PathReport
		// VIPBindFailures: the VIP:ports the agent cannot bind now.
		VIPBindFailures []api.VIPBindFailure
		// Stats: the golden request counters, sent only if welcome
		// listed wire.FeatureStats (Connected.Stats).
		Stats *wire.StatsReport
	}
	// Local is the full set of endpoints this node owns, now.
	Local struct{ Endpoints []api.Endpoint }
	// Sessions are session bindings not yet sent upstream.
	Sessions struct{ Sessions []api.Session }
	// Widen adds entries ("ns/name", "ns/*") to a scoped agent's scope.
	Widen struct{ Services []string }
	// Send is a request another part of the agent sends on the stream
	// (renew, audit, svid); Control's Send is the same event.
	//
	// Sizes, when set on an update the control plane sends, are the
	// encoded sizes of Msg's Resources then Removed (a shared feed encoded
	// them once), so chunking need not encode them again.
	Send struct {
		Msg   *wire.Message
		Sizes []int
	}
)

// Agent effects: in Output.Effects.
type (
	// Connected: the control plane welcomed the agent. The driver sends
	// its local endpoints and pending sessions (step Local and Sessions),
	// heartbeats every Heartbeat, ships audit records from Audit if set,
	// and asks for SVIDs if SVID.
	Connected struct {
		Heartbeat time.Duration
		Audit     *AuditResume
		SVID      bool
		// SVIDBatch: the control plane issues batches of workload SVIDs
		// (wire.FeatureSVIDBatch).
		SVIDBatch bool
		// ScopeAdd: the control plane widens a scope on the open stream
		// (wire.FeatureScopeAdd); without it Widen ends the stream.
		ScopeAdd bool
		// Stats: the control plane takes golden request counters in
		// heartbeats (wire.FeatureStats).
		Stats bool
	}
	// Apply: the driver applies the update (snapshot if Msg.Full) and
	// steps Applied with the result. Answered are the scope entries the
	// update answers (a scoped agent): once it is applied, a service of
	// one of them that the agent does not hold does not exist.
	Apply struct {
		Msg      *wire.Message
		Answered []string
	}
	// PeerLoads: the load the other agents put on each endpoint.
	PeerLoads struct{ EndpointLoad map[string]float64 }
	// AuditAck answers the audit batch in flight.
	AuditAck struct{ Msg *wire.Message }
	// TrustUpdate: new trust bundles and deny list.
	TrustUpdate struct{ Trust *wire.Trust }
	// CertIssued answers a renew.
	CertIssued struct{ Msg *wire.Message }
	// SVIDIssued answers an svid request (matched by nonce).
	SVIDIssued struct{ Msg *wire.Message }
	// Refused: the control plane refused a request; the stream goes on.
	Refused struct{ Reason string }
)

// AuditResume is where the control plane's copy of the node's audit chain
// ends (welcome's AuditSeq and AuditHash).
type AuditResume struct {
	Seq  uint64
	Hash string
}

// Known names the configuration the agent holds, for its subscribe.
type Known struct {
	StoreID string
	Version uint64
}

type agentState int

const (
	agentIdle agentState = iota
	agentAwaitWelcome
	agentStreaming
	agentApplying
	agentClosed
	agentReceiving // chunks of an update arrived, not yet the last
)

var agentStateNames = [...]string{"Idle", "AwaitWelcome", "Streaming", "Applying", "Closed", "Receiving"}

func (s agentState) String() string { return agentStateNames[s] }

// Agent is the agent's end of the sync protocol. It lives across streams
// (a NACK on one makes the next ask for a snapshot). Not safe for
// concurrent use: the driver steps it under its own lock.
type Agent struct {
	resyncFull bool        // the next subscribe asks for a full snapshot
	scope      *wire.Scope // what each subscribe asks for (nil: everything)

	// per stream
	state         agentState
	known         Known
	hb            time.Duration
	features      []string
	applying      *wire.Message // the update handed out in Apply
	auditInFlight bool
	subscribed    []string // the scope entries of this stream's first subscribe

	limits  Limits
	asm     Assembler     // the chunks of an update taken so far (Receiving)
	welcome time.Duration // the wait for welcome (0: welcomeTimeout)

	welcomeMisses int // streams in a row given up for no welcome (WelcomeTimedOut)
}

// NewAgent returns an idle machine.
func NewAgent() *Agent { return &Agent{limits: DefaultLimits} }

// SetLimits replaces the bounds of chunked updates (DefaultLimits).
func (a *Agent) SetLimits(l Limits) { a.limits, a.asm.Limits = l, l }

// SetWelcomeTimeout sets how long the driver waits for the answer to hello
// (0: the default, 10s); a slow link needs longer.
func (a *Agent) SetWelcomeTimeout(d time.Duration) { a.welcome = d }

// WelcomeTimedOut records that the driver gave up the stream for no
// welcome within ReadTimeout, and returns how long the next stream waits:
// twice as long as this one, up to 4 times the set wait, until a welcome
// comes. A link where the welcome always takes longer than the set wait
// would otherwise have the agent reconnect forever; a control plane that
// is down fails the dial or the handshake instead, which keep the set
// bound.
func (a *Agent) WelcomeTimedOut() time.Duration {
	a.welcomeMisses = min(a.welcomeMisses+1, maxWelcomeDoublings)
	return a.welcomeWait()
}

// maxWelcomeDoublings caps the growth of the wait for welcome
// (WelcomeTimedOut): 4 times the set wait.
const maxWelcomeDoublings = 2

// welcomeWait is the wait for welcome after welcomeMisses streams in a
// row were given up for none.
func (a *Agent) welcomeWait() time.Duration {
	d := a.welcome
	if d <= 0 {
		d = welcomeTimeout
	}
	if d > math.MaxInt64>>maxWelcomeDoublings {
		return d // longer than any link takes; doubled, it would wrap
	}
	return d << a.welcomeMisses
}

// SetScope sets the scope every subscribe asks for (nil: everything; see
// wire.Scope). A scoped subscriber gets a snapshot of its scope on every
// stream.
func (a *Agent) SetScope(s *wire.Scope) { a.scope = s }

// ErrRescope ends a stream whose control plane cannot widen a scope on the
// open stream (no wire.FeatureScopeAdd): the driver reconnects at once, and
// the next subscribe names the wider scope.
var ErrRescope = errors.New("sync: scope widened; reconnecting with it")

// widen adds the new entries of services to the scope and returns them.
func (a *Agent) widen(services []string) []string {
	if a.scope == nil || len(a.scope.Services) == 0 {
		return nil // everything is subscribed already
	}
	have := make(map[string]bool, len(a.scope.Services))
	for _, k := range a.scope.Services {
		have[k] = true
	}
	var added []string
	for _, k := range services {
		if ScopeEntry(k) && !have[k] && len(have) < MaxScopeServices {
			have[k] = true
			added = append(added, k)
		}
	}
	if len(added) > 0 {
		sc := *a.scope
		sc.Services = append(slices.Clip(sc.Services), added...)
		a.scope = &sc
	}
	return added
}

// State names the current state (for logs and tests).
func (a *Agent) State() string { return a.state.String() }

// ResyncFull tells whether the next stream asks for a full snapshot.
func (a *Agent) ResyncFull() bool { return a.resyncFull }

// Connect starts a stream: the hello frame for node with caps. known is
// the configuration the agent holds, for the subscribe after welcome.
func (a *Agent) Connect(node *api.Node, caps []string, known Known) Output {
	*a = Agent{resyncFull: a.resyncFull, scope: a.scope, limits: a.limits, asm: Assembler{Limits: a.limits}, welcome: a.welcome,
		welcomeMisses: a.welcomeMisses, state: agentAwaitWelcome, known: known}
	return Output{Send: []*wire.Message{{Type: wire.TypeHello, Protocol: wire.ProtocolVersion, Node: node, Capabilities: caps}}}
}

// ReadTimeout is how long the driver waits for the next frame.
func (a *Agent) ReadTimeout() time.Duration {
	if a.state == agentAwaitWelcome {
		return a.welcomeWait()
	}
	return readTimeout(a.hb)
}

// Step feeds one event (Recv, Applied, Tick, Local, Sessions, Send) and
// returns what to send and do. Effects are Connected, Apply, PeerLoads,
// AuditAck, TrustUpdate, CertIssued, SVIDIssued and Refused.
func (a *Agent) Step(ev Event) (out Output) {
	if ev, ok := ev.(Widen); ok {
		return a.widenStep(ev.Services)
	}
	if a.state == agentClosed || a.state == agentIdle {
		return Output{Err: fmt.Errorf("sync: %T on a stream that is %s", ev, a.state)}
	}
	defer func() {
		if out.Err != nil {
			a.state = agentClosed
		}
	}()
	switch ev := ev.(type) {
	case Recv:
		return a.recv(ev.Msg)
	case Applied:
		return a.applied(ev.Err)
	case Tick:
		if err := a.needStreaming("heartbeat"); err != nil {
			return Output{Err: err}
		}
		m := &wire.Message{Type: wire.TypeHeartbeat, Load: ev.Load, EndpointLoad: ev.EndpointLoad, Paths: ev.Paths,
			VIPBindFailures: ev.VIPBindFailures}
		if slices.Contains(a.features, wire.FeatureStats) {
			m.Stats = ev.Stats // an older control plane would carry them for nothing
		}
		return send(m)
	case Local:
		if err := a.needStreaming("local endpoints"); err != nil {
			return Output{Err: err}
		}
		return send(&wire.Message{Type: wire.TypeLocal, Endpoints: ev.Endpoints})
	case Sessions:
		if err := a.needStreaming("sessions"); err != nil {
			return Output{Err: err}
		}
		if len(ev.Sessions) == 0 {
			return Output{}
		}
		return send(&wire.Message{Type: wire.TypeSessions, Sessions: ev.Sessions})
	case Send:
		return a.sendRequest(ev.Msg)
	default:
		return Output{Err: fmt.Errorf("sync: unknown agent event %T", ev)}
	}
}

func send(m ...*wire.Message) Output { return Output{Send: m} }

// widenStep adds entries to the scope and asks for them on the open
// stream, or ends it when its control plane cannot widen a scope.
func (a *Agent) widenStep(services []string) Output {
	added := a.widen(services)
	if len(added) == 0 || a.needStreaming("widen") != nil {
		return Output{} // nothing new, or the next subscribe names them
	}
	if !slices.Contains(a.features, wire.FeatureScopeAdd) {
		a.state = agentClosed
		return Output{Err: ErrRescope}
	}
	return send(&wire.Message{Type: wire.TypeSubscribe, Scope: &wire.Scope{Services: added}})
}

func (a *Agent) needStreaming(what string) error {
	if a.state != agentStreaming && a.state != agentApplying && a.state != agentReceiving {
		return fmt.Errorf("sync: %s before welcome", what)
	}
	return nil
}

func (a *Agent) recv(m *wire.Message) Output {
	if m == nil {
		return Output{Err: errors.New("sync: nil frame")}
	}
	switch a.state {
	case agentAwaitWelcome:
		switch m.Type {
		case wire.TypeWelcome:
		case wire.TypeError:
			return Output{Err: fmt.Errorf("control plane refused: %s", m.Error)}
		default:
			return Output{Err: fmt.Errorf("expected welcome, got %s", m.Type)}
		}
		a.state, a.features, a.welcomeMisses = agentStreaming, m.Features, 0
		a.hb = time.Duration(m.HeartbeatMillis) * time.Millisecond
		if a.hb <= 0 || a.hb > time.Minute {
			a.hb = 5 * time.Second
		}
		sub := &wire.Message{Type: wire.TypeSubscribe, StoreID: a.known.StoreID, KnownVersion: a.known.Version, Scope: a.scope}
		if a.resyncFull {
			sub.KnownVersion = 0 // after a NACK: deltas built on top of it would miss its changes
			a.resyncFull = false
		}
		if a.scope != nil && len(a.scope.Services) > 0 {
			// What it holds is part of the store: a control plane that
			// predates scopes would send a delta of everything on top.
			sub.KnownVersion = 0
			a.subscribed = slices.Clone(a.scope.Services)
		}
		c := Connected{Heartbeat: a.hb, SVID: slices.Contains(m.Features, wire.FeatureSVID),
			SVIDBatch: slices.Contains(m.Features, wire.FeatureSVIDBatch), ScopeAdd: slices.Contains(m.Features, wire.FeatureScopeAdd),
			Stats: slices.Contains(m.Features, wire.FeatureStats)}
		if slices.Contains(m.Features, wire.FeatureAudit) {
			c.Audit = &AuditResume{Seq: m.AuditSeq, Hash: m.AuditHash}
		}
		return Output{Send: []*wire.Message{sub}, Effects: []Effect{c}}
	case agentApplying:
		return Output{Err: fmt.Errorf("sync: %s while update %d is being applied", describe(m), a.applying.Version)}
	case agentReceiving:
		// The control plane writes an update's chunks back to back.
		if m.Type != wire.TypeUpdate || (m.Chunk == 0 && m.Chunks == 0) {
			held, next, chunks := a.asm.Held()
			return a.badUpdate(held, fmt.Errorf("%s before chunk %d of %d", describe(m), next, chunks))
		}
		return a.chunk(m)
	}
	switch m.Type {
	case wire.TypeUpdate:
		if m.Chunk != 0 || m.Chunks != 0 {
			return a.chunk(m)
		}
		a.state, a.applying = agentApplying, m
		return Output{Effects: []Effect{a.apply(m)}}
	case wire.TypeHeartbeat: // the control plane's answer
		return Output{Effects: []Effect{PeerLoads{m.EndpointLoad}}}
	case wire.TypeAuditAck:
		if !a.auditInFlight { // one batch in flight at a time
			return Output{Err: errors.New("unexpected auditAck")}
		}
		a.auditInFlight = false
		return Output{Effects: []Effect{AuditAck{m}}}
	case wire.TypeTrust:
		if m.Trust == nil {
			return Output{}
		}
		return Output{Effects: []Effect{TrustUpdate{m.Trust}}}
	case wire.TypeSVIDIssued:
		return Output{Effects: []Effect{SVIDIssued{m}}}
	case wire.TypeCert:
		return Output{Effects: []Effect{CertIssued{m}}}
	case wire.TypeError:
		// After hello, errors report a refused request (e.g. a local
		// endpoint name owned by another node); the stream goes on.
		return Output{Effects: []Effect{Refused{m.Error}}}
	}
	return Output{Err: fmt.Errorf("unexpected %s", m.Type)}
}

// apply is the Apply effect of update m, with the scope entries it answers.
func (a *Agent) apply(m *wire.Message) Apply {
	ap := Apply{Msg: m}
	switch {
	case m.Full:
		ap.Answered = a.subscribed
	case len(m.ScopeAdded) > 0:
		ap.Answered = m.ScopeAdded
	}
	return ap
}

func (a *Agent) applied(err error) Output {
	if a.state != agentApplying {
		return Output{Err: errors.New("sync: applied without an update")}
	}
	m := a.applying
	a.state, a.applying = agentStreaming, nil
	if err != nil {
		// The server's next delta would start after the version we
		// refused and lose its changes: NACK, then resubscribe for a
		// full snapshot. The previous configuration keeps serving.
		a.resyncFull = true
		return Output{
			Send: []*wire.Message{{Type: wire.TypeNack, Nonce: m.Nonce, Version: m.Version, Error: err.Error()}},
			Err:  fmt.Errorf("rejected update %d: %w", m.Version, err),
		}
	}
	return send(&wire.Message{Type: wire.TypeAck, Nonce: m.Nonce, Version: m.Version})
}

// sendRequest checks a frame another part of the agent sends: only
// requests, and only those the control plane said it takes.
func (a *Agent) sendRequest(m *wire.Message) Output {
	if m == nil {
		return Output{Err: errors.New("sync: send nil frame")}
	}
	if err := a.needStreaming(m.Type); err != nil {
		return Output{Err: err}
	}
	switch m.Type {
	case wire.TypeRenew:
	case wire.TypeAudit:
		if !slices.Contains(a.features, wire.FeatureAudit) {
			return Output{Err: errors.New("sync: audit records sent to a control plane that does not take them")}
		}
		if a.auditInFlight {
			return Output{Err: errors.New("sync: audit batch sent before the previous one was acknowledged")}
		}
		a.auditInFlight = true
	case wire.TypeSVID:
		if !slices.Contains(a.features, wire.FeatureSVID) {
			return Output{Err: errors.New("sync: svid request to a control plane that does not sign SVIDs")}
		}
	default:
		return Output{Err: fmt.Errorf("sync: the agent does not send %s on its own", m.Type)}
	}
	return send(m)
}
