package control

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/fogmesh/fogmesh/internal/audit"
	"github.com/fogmesh/fogmesh/internal/identity"
)

// The control plane's audit state (issue 5): its own chain (admin changes,
// certificates issued) in StateDir/audit/control/, and a verified copy of
// every agent's chain in StateDir/audit/nodes/<node>/, fed by the sync
// stream's audit messages.

// auditState is the Server's audit part.
type auditState struct {
	log *audit.Log // the control plane's own chain

	// replicas and keys are guarded by Server.mu.
	replicas map[string]*audit.Replica
	keys     map[string]crypto.PublicKey // node -> key that signs its checkpoints

	mRecords                  *metrics.Counter
	mGap, mFork, mInvalid     *metrics.Counter
	mStoreErrors, mOwnDropped *metrics.Counter
}

func (s *Server) auditNodesDir() string { return filepath.Join(s.cfg.StateDir, "audit", "nodes") }

// openAudit opens the control plane's own audit log.
func (s *Server) openAudit() error {
	l, err := audit.Open(audit.Config{
		Dir:    filepath.Join(s.cfg.StateDir, "audit", "control"),
		Node:   s.cfg.Name,
		Signer: s.cfg.AuditSigner,
		Logger: s.log,
	})
	if err != nil {
		return fmt.Errorf("control: audit: %w", err)
	}
	s.audit.log = l
	s.audit.replicas = map[string]*audit.Replica{}
	s.audit.keys = map[string]crypto.PublicKey{}
	m := s.cfg.Metrics
	s.audit.mRecords = m.NewCounter(`fogmesh_control_audit_records_total`)
	s.audit.mGap = m.NewCounter(`fogmesh_control_audit_refused_total{reason="gap"}`)
	s.audit.mFork = m.NewCounter(`fogmesh_control_audit_refused_total{reason="fork"}`)
	s.audit.mInvalid = m.NewCounter(`fogmesh_control_audit_refused_total{reason="invalid"}`)
	s.audit.mStoreErrors = m.NewCounter(`fogmesh_control_audit_store_errors_total`)
	m.NewGauge(`fogmesh_control_audit_own_lost_total`, func() float64 { return float64(l.Dropped()) })
	return nil
}

// closeAudit closes the own log (writing its final checkpoint) and the
// replicas. Streams have ended.
func (s *Server) closeAudit() {
	if err := s.audit.log.Close(); err != nil {
		s.log.Error("control: audit log close", "err", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for n, r := range s.audit.replicas {
		r.Close()
		delete(s.audit.replicas, n)
	}
}

// Audit appends a record to the control plane's own audit chain; Node,
// Seq, Prev and Hash are set by the log, Time if zero. Other packages call
// it for what they decide outside the admin handlers: the PKI, for every
// certificate issued (Kind audit.KindCert, Action "issue", Object the
// serial, Actor the requesting node). It does not wait for the disk; see
// audit.Log.Append for when it can fail.
func (s *Server) Audit(rec audit.Record) error {
	return s.audit.log.Append(rec)
}

// SetAuditKey registers the public key that signs node's audit
// checkpoints (its node certificate's key); from then on the node's
// checkpoints are checked on ingest and by ?verify=1.
func (s *Server) SetAuditKey(node string, pub crypto.PublicKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.audit.keys[node] = pub
	if r := s.audit.replicas[node]; r != nil {
		r.SetPublicKey(pub)
	}
}

// replica returns node's replica, opening it on first use.
func (s *Server) replica(node string) (*audit.Replica, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.audit.replicas[node]; r != nil {
		return r, nil
	}
	if !audit.ValidNodeName(node) {
		return nil, fmt.Errorf("bad node name %q", node)
	}
	r, err := audit.OpenReplica(filepath.Join(s.auditNodesDir(), node), node)
	if err != nil {
		return nil, err
	}
	if k := s.audit.keys[node]; k != nil {
		r.SetPublicKey(k)
	}
	s.audit.replicas[node] = r
	return r, nil
}

// auditLast returns the last seq and hash held of node's chain (for
// welcome).
func (s *Server) auditLast(node string) (uint64, string, error) {
	r, err := s.replica(node)
	if err != nil {
		return 0, "", err
	}
	seq, hash := r.Last()
	return seq, hash, nil
}

// restartAuditChain archives the chain held for node (renamed to
// <node>.archived-<unix time>, nothing deleted) before a batch that starts
// the node's chain anew: seq 1 after genesis, sent by an agent whose state
// was reset. The restart is itself recorded in the control plane's chain.
func (s *Server) restartAuditChain(node string, recs []audit.Record) error {
	if len(recs) == 0 || recs[0].Seq != 1 || recs[0].Prev != audit.Genesis {
		return fmt.Errorf("%w: a restart must begin at seq 1 after genesis", audit.ErrInvalid)
	}
	r, err := s.replica(node)
	if err != nil {
		return err
	}
	oldSeq, oldHash := r.Last()
	if oldSeq == 0 {
		return nil // nothing held: the batch simply starts the chain
	}
	// The same first record already held: a resend, not a restart.
	if got, err := r.ReadFrom(1, 1); err == nil && len(got) == 1 && got[0].Hash == recs[0].Hash {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur := s.audit.replicas[node]; cur != r {
		return errors.New("audit replica changed meanwhile; retry")
	}
	if err := r.Close(); err != nil {
		return err
	}
	delete(s.audit.replicas, node)
	dir := filepath.Join(s.auditNodesDir(), node)
	archived := fmt.Sprintf("%s.archived-%d", dir, time.Now().Unix())
	if err := os.Rename(dir, archived); err != nil {
		return fmt.Errorf("archive audit chain of %s: %w", node, err)
	}
	s.log.Warn("control: node restarted its audit chain; the old one is archived", "node", node,
		"oldLastSeq", oldSeq, "archive", archived)
	if err := s.Audit(audit.Record{Kind: audit.KindAudit, Action: "restart chain", Actor: node, Object: node,
		Reason: fmt.Sprintf("previous chain archived at %s, last seq %d, hash %s", filepath.Base(archived), oldSeq, oldHash)}); err != nil {
		s.log.Error("control: audit the chain restart", "err", err)
	}
	return nil
}

// ingestAudit stores a batch of node's records if it continues the chain
// held; refusals are counted by cause.
func (s *Server) ingestAudit(node string, recs []audit.Record) (uint64, error) {
	r, err := s.replica(node)
	if err != nil {
		s.audit.mStoreErrors.Inc()
		return 0, err
	}
	before, _ := r.Last()
	last, err := r.Append(recs)
	s.audit.mRecords.Add(int(last - before))
	switch {
	case err == nil:
	case errors.Is(err, audit.ErrGap):
		s.audit.mGap.Inc()
	case errors.Is(err, audit.ErrFork):
		s.audit.mFork.Inc()
	case errors.Is(err, audit.ErrInvalid):
		s.audit.mInvalid.Inc()
	default:
		s.audit.mStoreErrors.Inc()
	}
	return last, err
}

// adminPrincipal names who made an admin request: the client certificate's
// first URI SAN or common name when the admin API runs with mutual TLS,
// else the remote IP.
func adminPrincipal(r *http.Request) string {
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		c := r.TLS.PeerCertificates[0]
		if len(c.URIs) > 0 {
			return c.URIs[0].String()
		}
		return "cn:" + c.Subject.CommonName
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	return "ip:" + host
}

// auditAdmin records an admin change, one record per object, and waits
// (briefly) until they are on disk, so an acknowledged change is an
// audited one.
func (s *Server) auditAdmin(r *http.Request, action string, objects []string, details string) {
	actor := adminPrincipal(r)
	for _, o := range objects {
		if err := s.Audit(audit.Record{Kind: audit.KindAdmin, Actor: actor, Action: action,
			Object: o, Reason: details}); err != nil {
			s.log.Error("control: audit admin change", "action", action, "object", o, "err", err)
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.audit.log.Flush(ctx); err != nil {
		s.log.Error("control: audit flush", "err", err)
	}
}

// AuditChain is one chain in GET /v1/audit answers.
type AuditChain struct {
	Node string `json:"node"`
	// Source is "control" for the control plane's own chain, "node" for
	// an agent's chain as shipped.
	Source   string `json:"source"`
	LastSeq  uint64 `json:"lastSeq"`
	LastHash string `json:"lastHash,omitempty"`
	// Report is set with ?verify=1: the whole chain re-read and checked.
	Report *audit.Report `json:"report,omitempty"`
	Intact *bool         `json:"intact,omitempty"`
}

// AuditResponse is the body of GET /v1/audit and GET /v1/audit/{node}.
type AuditResponse struct {
	Chains []AuditChain `json:"chains"`
}

// handleAudit serves GET /v1/audit (every chain) and GET
// /v1/audit/{node} (one node's, or the control plane's own under its
// Name); ?verify=1 re-reads and checks them.
func (s *Server) handleAudit(w http.ResponseWriter, r *http.Request) {
	verify, _ := strconv.ParseBool(r.URL.Query().Get("verify"))
	node := r.PathValue("node")
	var resp AuditResponse
	own := node == ""
	if node == s.cfg.Name {
		// The control plane's own chain, unless an agent has its name.
		if _, err := os.Stat(filepath.Join(s.auditNodesDir(), node)); err != nil {
			own, node = true, ""
		}
	}
	if own {
		seq, hash := s.audit.log.Last()
		c := AuditChain{Node: s.cfg.Name, Source: "control", LastSeq: seq, LastHash: hash}
		if verify {
			s.audit.log.Flush(r.Context())
			rep, err := s.audit.log.Verify(audit.Verifier{PublicKey: signerKey(s.cfg.AuditSigner)})
			if err != nil {
				writeError(w, http.StatusInternalServerError, err)
				return
			}
			c.Report, c.Intact = rep, ptr(rep.Intact())
		}
		resp.Chains = append(resp.Chains, c)
	}
	var nodes []string
	if own && r.PathValue("node") != "" {
		// Only the control plane's own chain was asked for.
	} else if node != "" {
		if !audit.ValidNodeName(node) {
			writeError(w, http.StatusBadRequest, fmt.Errorf("bad node name %q", node))
			return
		}
		if _, err := os.Stat(filepath.Join(s.auditNodesDir(), node)); err != nil {
			writeError(w, http.StatusNotFound, fmt.Errorf("no audit records of node %q", node))
			return
		}
		nodes = []string{node}
	} else {
		ents, err := os.ReadDir(s.auditNodesDir())
		if err != nil && !os.IsNotExist(err) {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		for _, e := range ents {
			if e.IsDir() && audit.ValidNodeName(e.Name()) {
				nodes = append(nodes, e.Name())
			}
		}
		slices.Sort(nodes)
	}
	for _, n := range nodes {
		rp, err := s.replica(n)
		if err != nil {
			writeError(w, http.StatusInternalServerError, fmt.Errorf("node %s: %w", n, err))
			return
		}
		seq, hash := rp.Last()
		c := AuditChain{Node: n, Source: "node", LastSeq: seq, LastHash: hash}
		if verify {
			s.mu.Lock()
			key := s.audit.keys[n]
			s.mu.Unlock()
			rep, err := rp.Verify(audit.Verifier{PublicKey: key})
			if err != nil {
				writeError(w, http.StatusInternalServerError, fmt.Errorf("node %s: %w", n, err))
				return
			}
			c.Report, c.Intact = rep, ptr(rep.Intact())
		}
		resp.Chains = append(resp.Chains, c)
	}
	writeJSON(w, http.StatusOK, resp)
}

func signerKey(s crypto.Signer) crypto.PublicKey {
	if s == nil {
		return nil
	}
	return s.Public()
}

func ptr[T any](v T) *T { return &v }

// AuditKeyFile and AuditPubFile, in the state directory: the key that signs
// the control plane's own audit checkpoints (made on first secure start,
// mode 0600) and its public half, for `fogmesh audit verify --pubkey`.
const (
	AuditKeyFile = "audit-key.pem"
	AuditPubFile = "audit-key.pub.pem"
)

func auditKey(dir string) (crypto.Signer, error) {
	path := filepath.Join(dir, AuditKeyFile)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		k, err := identity.NewKey()
		if err != nil {
			return nil, err
		}
		b, err := identity.EncodeKeyPEM(k)
		if err != nil {
			return nil, err
		}
		if err := identity.WriteFileAtomic(path, b, 0o600); err != nil {
			return nil, fmt.Errorf("control: audit key: %w", err)
		}
	}
	key, err := identity.ReadKeyFile(path)
	if err != nil {
		return nil, fmt.Errorf("control: audit key: %w", err)
	}
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return nil, err
	}
	pub := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	if err := identity.WriteFileAtomic(filepath.Join(dir, AuditPubFile), pub, 0o644); err != nil {
		return nil, fmt.Errorf("control: audit public key: %w", err)
	}
	return key, nil
}
