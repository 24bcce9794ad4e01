// Package audit is fogmesh's tamper-evident audit log (issue 5): who was
// allowed or denied what, which admin changes were made, which certificates
// were issued. Agents and the control plane each keep one append-only chain;
// agents ship theirs to the control plane, which keeps a verified copy per
// node, so a node that is later compromised cannot rewrite what it already
// reported.
//
// # Records and the hash chain
//
// A log is a file of JSON lines, one Record per line. Records of one node
// form a chain: Seq counts from 1 with no gaps, and each record's Prev is the
// Hash of the record before it (Genesis for seq 1). Hash is
//
//	hex(SHA-256(canonical))
//
// where canonical is the record's JSON object with the hash and sig keys
// left out: keys in the order of Record's fields (seq, time, node, kind,
// actor, action, object, decision, reason, prev), empty optional fields
// omitted, time in RFC 3339 with nanoseconds in UTC, strings as Go's
// encoding/json writes them without HTML escaping, no spaces. The line in
// the file is the same object with "hash" (and, for a checkpoint, "sig")
// appended, then '\n'. A verifier decodes a line, re-encodes it and requires
// the bytes to be identical, so any edit — even one that keeps the meaning,
// such as extra spaces — is detected.
//
// # Checkpoints
//
// With a Signer, the log writes a checkpoint record (kind "checkpoint")
// every CheckpointEvery records, every CheckpointInterval, and on Close. It
// is an ordinary link of the chain whose Sig is the signer's signature of
// its Hash (the 32-byte digest; ECDSA and RSA sign it as a SHA-256 digest,
// Ed25519 signs the 32 bytes as its message). Since the hash covers Prev, a
// checkpoint vouches for every record before it: someone who can edit the
// files but does not hold the key can rewrite the chain after the last
// checkpoint at most, and the control plane's copy shows that too.
//
// What a chain cannot show on its own: records cut off its end (back to
// any checkpoint), records appended after its last signed checkpoint by
// someone without the key, and records removed from its start along with
// every file before them. So Verify anchors the ends: the start at seq 1
// (or at the seq a rotated file's name declares), the end at a Head known
// from elsewhere (the control plane stores each node's on every batch it
// takes); what no anchor covers is reported as unanchored
// (VerdictUnanchored), never as intact.
package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// Kinds of records. Other kinds are allowed; these are the ones fogmesh
// writes.
const (
	KindAuthz      = "authz"      // an authorization decision on an agent
	KindAdmin      = "admin"      // a change through an admin API
	KindCert       = "cert"       // a certificate issued or revoked, or a session cut for its peer's (revoked, expired)
	KindLimit      = "limit"      // a peer cut off past a resource limit (a mesh session past its buffer budget)
	KindCheckpoint = "checkpoint" // a signed checkpoint (written by Log)
	KindAudit      = "audit"      // about the log itself (records lost to a full buffer)
)

// ActionHeadMismatch is the action of the KindAudit record an owner
// writes into its own chain when, on opening it, the chain does not reach
// the head it had stored (records were cut off or rewritten while it was
// stopped, and cannot be shipped again). Verify reports every such record
// as ProblemHead, so the loss stays visible in the chain for good.
const ActionHeadMismatch = "head mismatch"

// ActionPastHead is the action of the KindAudit record an owner writes
// into its own chain when, on opening it, the chain holds records past the
// head it had stored: written after the head was last stored (a crash
// before it was), or appended while it was stopped; nothing can tell which.
// Verify names them in Report.Unanchored for good, so they are never
// reported intact (nor signed as if they were: the record says so first).
const ActionPastHead = "past head"

// Decisions of authz records.
const (
	Allow = "allow"
	Deny  = "deny"
)

// Genesis is the Prev of the first record of a chain.
const Genesis = "0000000000000000000000000000000000000000000000000000000000000000"

// MaxFieldBytes bounds each string field of a record; Append cuts longer
// values (and marks the cut with "…"), so one record stays one short line.
const MaxFieldBytes = 4096

// maxLine bounds a line a reader accepts: every field at its maximum, with
// JSON escaping, fits.
const maxLine = 256 << 10

// Record is one audit entry. Callers of Log.Append set Time (zero = now),
// Kind, Actor, Action, Object, Decision and Reason; the log sets Seq, Node,
// Prev and Hash. The field order is the canonical key order.
type Record struct {
	Seq  uint64    `json:"seq"`
	Time time.Time `json:"time"`
	Node string    `json:"node"` // node (or control plane) whose chain this is
	Kind string    `json:"kind"` // KindAuthz, KindAdmin, KindCert, ...
	// Actor is who acted: a workload identity (SPIFFE ID) for authz, the
	// admin principal for admin, the certificate's requester for cert.
	Actor  string `json:"actor,omitempty"`
	Action string `json:"action"`           // e.g. "connect", "apply", "delete", "issue"
	Object string `json:"object,omitempty"` // what was acted on: a service, Kind/ns/name, a certificate serial
	// Decision is Allow or Deny for authz records, empty otherwise.
	Decision string `json:"decision,omitempty"`
	Reason   string `json:"reason,omitempty"` // the policy that decided, an error, details
	Prev     string `json:"prev"`             // Hash of the previous record, Genesis for seq 1
	Hash     string `json:"hash,omitempty"`   // hex SHA-256 of the canonical encoding
	// Sig is set on checkpoints only: base64 of the signature of Hash's
	// 32 bytes.
	Sig string `json:"sig,omitempty"`
}

// canonical returns the canonical encoding (see the package doc): the record
// without hash and sig, no trailing newline.
func (r *Record) canonical() ([]byte, error) {
	c := *r
	c.Hash, c.Sig = "", ""
	return encodeJSON(&c)
}

func encodeJSON(r *Record) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(r); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

// ComputeHash returns the hash the record should carry.
func (r *Record) ComputeHash() (string, error) {
	c, err := r.canonical()
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(c)
	return hex.EncodeToString(sum[:]), nil
}

// MarshalLine returns the record's line in a log file, with the '\n'.
func (r *Record) MarshalLine() ([]byte, error) {
	b, err := encodeJSON(r)
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// Errors of DecodeLine.
var (
	// ErrNotCanonical: the line decodes but is not the canonical encoding of
	// what it decodes to (it was edited by hand, or written by something
	// else).
	ErrNotCanonical = errors.New("not in canonical form")
	// ErrBadHash: the record's hash is not the hash of its content (the
	// record was edited and the hash not recomputed).
	ErrBadHash = errors.New("hash does not match content")
)

// DecodeLine decodes one line of a log file (with or without its '\n') and
// checks it: canonical form and hash. The record is returned whenever the
// JSON decodes, even with ErrNotCanonical or ErrBadHash, so a verifier can
// still name its seq.
func DecodeLine(line []byte) (*Record, error) {
	line = bytes.TrimSuffix(line, []byte("\n"))
	if len(line) == 0 {
		return nil, errors.New("empty line")
	}
	if len(line) > maxLine {
		return nil, fmt.Errorf("line of %d bytes is longer than %d", len(line), maxLine)
	}
	r := new(Record)
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(r); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	if dec.More() {
		return nil, errors.New("decode: data after the record")
	}
	if err := r.checkFields(); err != nil {
		return r, err
	}
	want, err := encodeJSON(r)
	if err != nil {
		return r, fmt.Errorf("re-encode: %w", err)
	}
	if !bytes.Equal(want, line) {
		return r, ErrNotCanonical
	}
	if err := r.checkHash(); err != nil {
		return r, err
	}
	return r, nil
}

// checkFields checks what a well-formed record must have.
func (r *Record) checkFields() error {
	switch {
	case r.Seq == 0:
		return errors.New("seq 0")
	case r.Node == "" || r.Kind == "" || r.Action == "":
		return fmt.Errorf("seq %d: node, kind and action are required", r.Seq)
	case !isHex32(r.Prev):
		return fmt.Errorf("seq %d: prev is not a hex SHA-256", r.Seq)
	case !isHex32(r.Hash):
		return fmt.Errorf("seq %d: hash is not a hex SHA-256", r.Seq)
	case r.Seq == 1 && r.Prev != Genesis:
		return fmt.Errorf("seq 1: prev is not the genesis hash")
	}
	for _, f := range []string{r.Node, r.Kind, r.Actor, r.Action, r.Object, r.Decision, r.Reason} {
		if len(f) > MaxFieldBytes {
			return fmt.Errorf("seq %d: a field is longer than %d bytes", r.Seq, MaxFieldBytes)
		}
	}
	return nil
}

func (r *Record) checkHash() error {
	h, err := r.ComputeHash()
	if err != nil {
		return err
	}
	if h != r.Hash {
		return ErrBadHash
	}
	return nil
}

func isHex32(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// normalize makes a caller's record encodable and bounded: valid UTF-8,
// fields cut at MaxFieldBytes, time in UTC within what RFC 3339 can write.
func (r *Record) normalize(now time.Time) {
	for _, p := range []*string{&r.Node, &r.Kind, &r.Actor, &r.Action, &r.Object, &r.Decision, &r.Reason} {
		*p = clip(*p)
	}
	if r.Time.IsZero() || r.Time.Year() < 1 || r.Time.Year() > 9999 {
		r.Time = now
	}
	r.Time = r.Time.UTC()
	r.Sig = ""
}

func clip(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= MaxFieldBytes {
		return s
	}
	cut := MaxFieldBytes - len("…")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
