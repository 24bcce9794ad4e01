package agent

import (
	"context"
	"crypto"
	"fmt"
	"path/filepath"

	"github.com/fogmesh/fogmesh/internal/audit"
	"github.com/fogmesh/fogmesh/internal/audit/ship"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// The agent's audit log (issue 5): records are kept in StateDir/audit/
// whether or not a control plane is reachable, and shipped upstream in
// order, without gaps, whenever the sync stream is up (package
// audit/ship; docs/protocol.md, "Audit records").

// AuditConfig configures what the agent audits.
type AuditConfig struct {
	// Decisions says which authorization decisions are recorded: "deny"
	// (the default: every refusal, and no cost on the allowed fast path),
	// "all", or "none".
	Decisions string `json:"decisions,omitempty"`
	// MaxBytes bounds the log's files on disk (default 512 MiB): an agent
	// cut off from every control plane keeps every record it has not
	// shipped, up to this; records past it are lost, counted in
	// fogmesh_agent_audit_lost_total and noted in the chain, and shipped
	// files are removed (oldest first) once the log takes over half of it.
	MaxBytes int64 `json:"maxBytes,omitempty"`
	// Signer signs the log's checkpoints: the node's private key (the
	// PKI sets it). Nil: no checkpoints.
	Signer crypto.Signer `json:"-"`
}

// DefaultAuditMaxBytes is AuditConfig.MaxBytes's default.
const DefaultAuditMaxBytes = 512 << 20

// Values of AuditConfig.Decisions.
const (
	AuditDeny = "deny"
	AuditAll  = "all"
	AuditNone = "none"
)

func (c *AuditConfig) validate() error {
	switch {
	case c.MaxBytes == 0:
		c.MaxBytes = DefaultAuditMaxBytes
	case c.MaxBytes < 1<<20:
		return fmt.Errorf("audit.maxBytes: %d is below 1 MiB", c.MaxBytes)
	}
	switch c.Decisions {
	case "":
		c.Decisions = AuditDeny
	case AuditDeny, AuditAll, AuditNone:
	default:
		return fmt.Errorf("audit.decisions: %q is not one of deny, all, none", c.Decisions)
	}
	return nil
}

// openAudit opens the agent's audit log.
func (a *Agent) openAudit() error {
	a.auditWritten = make(chan struct{}, 1)
	signer := a.cfg.Audit.Signer
	if signer == nil && a.ident != nil {
		signer = a.ident.key // the control plane knows it from the node certificate
	}
	l, err := audit.Open(audit.Config{
		Dir:          filepath.Join(a.cfg.StateDir, "audit"),
		Node:         a.cfg.Node.Name,
		MaxBytes:     a.cfg.Audit.MaxBytes,
		MaxFileBytes: min(16<<20, a.cfg.Audit.MaxBytes/8),
		Signer:       signer,
		Logger:       a.log,
		OnWrite: func(uint64) {
			select {
			case a.auditWritten <- struct{}{}:
			default:
			}
		},
	})
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	a.audit = l
	m := a.cfg.Metrics
	a.auditRefused = m.NewCounter(`fogmesh_agent_audit_refused_total`)
	a.auditDamaged = m.NewCounter(`fogmesh_agent_audit_damaged_total`)
	m.NewGauge(`fogmesh_agent_audit_lost_total`, func() float64 { return float64(l.Dropped()) })
	m.NewGauge(`fogmesh_agent_audit_seq`, func() float64 { s, _ := l.Last(); return float64(s) })
	m.NewGauge(`fogmesh_agent_audit_shipped_seq`, func() float64 { return float64(a.auditShipped.Load()) })
	return nil
}

// AuthzDecision is one authorization decision, as the authorization code
// reports it to AuditDecision.
type AuthzDecision struct {
	// Source is the caller's identity (a SPIFFE ID), or "" if the caller
	// presented none.
	Source string
	// Action is what was asked: "connect" for a connection, "GET /path"
	// for an HTTP request, the gRPC method, ...
	Action string
	// Target is what it was asked of: the destination service
	// ("namespace/name"), with the port if it matters.
	Target string
	Allow  bool
	// Policy names the policy (or rule) that decided, or why none did.
	Policy string
}

// AuditDecision records an authorization decision in the node's audit
// log, if AuditConfig.Decisions asks for it. It is safe for concurrent use
// and made for the data path: a filtered-out decision costs a comparison,
// a recorded one an enqueue; it blocks only while the log's buffer is full
// (at most audit.Config.BlockFor) and returns audit.ErrFull if the record
// was lost (counted, logged, and noted in the chain).
func (a *Agent) AuditDecision(d AuthzDecision) error {
	if !a.auditWants(d.Allow) {
		return nil
	}
	dec := audit.Deny
	if d.Allow {
		dec = audit.Allow
	}
	return a.audit.Append(audit.Record{Kind: audit.KindAuthz, Actor: d.Source, Action: d.Action,
		Object: d.Target, Decision: dec, Reason: d.Policy})
}

// auditWants reports whether a decision is recorded (Config.Audit.Decisions).
func (a *Agent) auditWants(allow bool) bool {
	switch a.cfg.Audit.Decisions {
	case AuditNone:
		return false
	case AuditDeny:
		return !allow
	}
	return true
}

// Audit appends any record to the node's audit log (Node, Seq, Prev and
// Hash are set by the log): for example the PKI's certificate renewals,
// with Kind audit.KindCert.
func (a *Agent) Audit(rec audit.Record) error { return a.audit.Append(rec) }

// AuditLog returns the node's audit log (for tests and local tools).
func (a *Agent) AuditLog() *audit.Log { return a.audit }

// shipAudit sends the records the control plane does not hold yet over
// the sync stream (ship.Shipper.Run).
func (a *Agent) shipAudit(ctx context.Context, cpSeq uint64, cpHash string, write func(*wire.Message) error, acks <-chan *wire.Message) error {
	s := &ship.Shipper{Log: a.audit, Written: a.auditWritten, Logger: a.log,
		Shipped: func(seq uint64) {
			a.auditShipped.Store(seq)
			a.audit.Prune(seq) // only when the log takes over half its bound
		}, Refused: a.auditRefused.Inc,
		Damaged: func(n uint64) { a.auditDamaged.Add(int(n)) }}
	return s.Run(ctx, cpSeq, cpHash, write, acks)
}
