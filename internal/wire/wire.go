// Package wire is the fogmesh sync protocol between an agent (or, later, a
// regional control plane) and a control plane: frames and messages only. The
// server lives in internal/control, the client in internal/agent.
//
// It carries the semantics of delta xDS with fogmesh's own resource types:
// named, versioned resources; a subscription per type with a scope; a first
// response that is either a full snapshot or, when the subscriber names the
// version it already holds, only what changed since; versioned deltas after
// that; ACK/NACK of every response by nonce. docs/protocol.md says why it is
// not xDS itself.
//
// Frame layout, on any byte stream (TLS 1.3 with mutual authentication;
// plain TCP only in insecure mode):
//
//	+----------------+---------------------------+
//	| length uint32  | JSON-encoded Message      |
//	| big endian     | (length bytes, ≤ MaxFrame)|
//	+----------------+---------------------------+
package wire

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
)

// ProtocolVersion is sent in Hello; a server refuses versions it does not know.
const ProtocolVersion = 1

// MaxFrame bounds a frame's length. A snapshot of 10,000 services with their
// endpoints fits with room to spare.
const MaxFrame = 32 << 20

// Bounds of chunked updates (Message.Chunk). A sender splits an update
// whose Resources and Removed, JSON-encoded, exceed ChunkBytes or whose
// count exceeds ChunkItems into chunks that stay within both (a single
// item larger than ChunkBytes goes alone in its chunk). A receiver refuses
// an update of more than MaxChunks chunks or MaxUpdateBytes of resource
// bodies and names: it holds the chunks until the last one arrives.
const (
	ChunkBytes     = 256 << 10
	ChunkItems     = 500
	MaxChunks      = 4096
	MaxUpdateBytes = 256 << 20
)

// Message types.
const (
	// agent -> control
	TypeHello     = "hello"     // first message: who I am
	TypeSubscribe = "subscribe" // which resource types, from which version
	TypeAck       = "ack"       // response applied
	TypeNack      = "nack"      // response rejected, with Error
	TypeHeartbeat = "heartbeat" // liveness and load; the control plane answers each with an empty heartbeat
	TypeLocal     = "local"     // full set of endpoints this node owns, with health
	TypeSessions  = "sessions"  // session bindings this agent created or changed
	TypeAudit     = "audit"     // a batch of this node's audit records, in seq order (only if welcome lists FeatureAudit)
	TypeRenew     = "renew"     // CSR for a new node certificate (mTLS stream only)
	TypeSVID      = "svid"      // CSR for a workload SVID of this node (Nonce, SVID, CSR; only if welcome lists FeatureSVID)
	TypeJoin      = "join"      // first and only message on a join connection (ALPN fogmesh-join/1)
	// control -> agent
	TypeWelcome = "welcome" // hello accepted
	TypeUpdate  = "update"  // snapshot or delta
	TypeError   = "error"   // a refusal; fatal (the server closes) only in answer to hello or join
	TypeCert    = "cert"    // a node certificate: the answer to renew
	TypeJoined  = "joined"  // the answer to join: certificate and trust
	TypeTrust   = "trust"   // trust bundles and the node deny list; sent to agents that hello with CapTrust
	// TypeSVIDIssued answers TypeSVID with the same Nonce: Certificates
	// (leaf first), or Error when refused.
	TypeSVIDIssued = "svidIssued"
	// TypeAuditAck answers each audit batch with the last seq the control
	// plane holds for the node (AuditSeq); Error says why a batch was
	// refused (a gap or a fork), and the agent resumes from AuditSeq+1.
	TypeAuditAck = "auditAck"
)

// Capabilities an agent names in Hello. The control plane only sends the
// messages of a capability the agent named, so older agents never see them.
const (
	CapTrust = "trust" // TypeTrust messages
	// CapPolicy2: the agent enforces the narrowing fields of routes and
	// authorization policies (spec.meshWide, spec.unmatched, queryParams,
	// withoutHeaders, sourceLabels, sourceNamespace). An agent without it
	// would ignore them and so widen the rules; the control plane refuses
	// its stream (it keeps serving from its cache until upgraded).
	CapPolicy2 = "policy2"
	// CapChunks: the agent takes updates in chunks (Message.Chunk). An
	// agent without it would take each chunk for a whole update (a
	// snapshot's last chunk for the whole configuration), so the control
	// plane sends it every update in one frame, as before chunking.
	CapChunks = "chunks"
	// CapRegion: the hello is from a regional control plane (Scope names
	// its region, Node is empty), not from an agent. The stream is then a
	// region link (internal/control, docs/regions.md): after welcome and
	// subscribe, each end sends the other updates of what it owns and
	// acks the other's, and the region sends heartbeats.
	CapRegion = "region"
)

// Features a control plane lists in welcome. An agent uses a message type
// that an older control plane would not know only when it is listed.
const (
	// FeatureAudit: the control plane stores audit records (TypeAudit);
	// welcome's AuditSeq is the last seq it holds for the node.
	FeatureAudit = "audit"
	// FeatureSVID: the control plane signs workload SVIDs (TypeSVID) for
	// identities of endpoints on the asking node.
	FeatureSVID = "svid"
	// FeatureSVIDBatch: the control plane answers an svid request with
	// SVIDRequest.Batch by a batch of certificates for the one key,
	// covering its autonomy window and a ninth more (svidIssued's
	// Certificates and SVIDBatch), so the agent serves workload SVIDs
	// while cut off (docs/offline.md).
	FeatureSVIDBatch = "svidBatch"
	// FeatureScopeAdd: the control plane takes further subscribes on a
	// stream whose first one named scope services: each adds entries to
	// Scope.Services and is answered by an update (a delta) carrying what
	// enters the scope, with ScopeAdded naming the entries it answers.
	// An older control plane ends a stream on a second subscribe, so an
	// agent without this feature reconnects with the wider scope instead.
	FeatureScopeAdd = "scopeAdd"
	// FeatureStats: the control plane takes heartbeat.stats (StatsReport)
	// and computes request rates from them (fogmesh stat, the web UI). An
	// older one would ignore the field, so an agent sends it only when
	// this is listed.
	FeatureStats = "stats"
	// FeatureRegionStats: a global control plane takes a region link's
	// heartbeat.nodeStats (the golden counters of the region's nodes), so
	// its stat, top and web UI show the whole mesh. It is listed in the
	// welcome of a region link.
	FeatureRegionStats = "regionStats"
)

// Bounds of an SVID batch (svidIssued): at most MaxSVIDBatch chains of at
// most MaxSVIDChain certificates each. A control plane refuses an
// autonomy window and workload TTL whose batch would be larger.
const (
	MaxSVIDBatch = 1024
	MaxSVIDChain = 8
)

// Resource types a subscriber may ask for.
const (
	ResourceNode     = api.KindNode
	ResourceService  = api.KindService
	ResourceEndpoint = api.KindEndpoint
	ResourceRoute    = api.KindRoute
	ResourcePolicy   = api.KindDestinationPolicy
	ResourceSession  = api.KindSession
	// ResourceAuthorizationPolicy: added in the same protocol version; an
	// agent that does not know it ignores it (and then enforces nothing).
	ResourceAuthorizationPolicy = api.KindAuthorizationPolicy
)

// RelayHeartbeat is how often a relay (fogmesh relay) sends a heartbeat on
// its stream to the control plane, which answers each; either side drops
// a relay stream silent for 4 × RelayHeartbeat.
const RelayHeartbeat = 15 * time.Second

// Message is the one frame body. Type says which fields are set.
type Message struct {
	Type string `json:"type"`

	// Hello
	Protocol     int       `json:"protocol,omitempty"`
	Node         *api.Node `json:"node,omitempty"`
	Capabilities []string  `json:"capabilities,omitempty"`

	// Join: Token, Node and CSR (a relay's join: Token, Relay and CSR).
	// Renew: CSR. Joined, Cert: Certificates (DER, leaf first). Joined also
	// carries Trust.
	Token        string   `json:"token,omitempty"`
	Relay        string   `json:"relay,omitempty"` // the joining relay's name
	CSR          []byte   `json:"csr,omitempty"`
	Certificates [][]byte `json:"certificates,omitempty"`
	// A regional control plane's join (and renewal on its region stream):
	// Token, Region, CSR (its client certificate) and CACSR (its
	// intermediate CA); Joined and Cert carry CACertificates (the
	// intermediate, DER) beside Certificates.
	Region         string   `json:"region,omitempty"`
	CACSR          []byte   `json:"caCsr,omitempty"`
	CACertificates [][]byte `json:"caCertificates,omitempty"`

	// Trust, Joined
	Trust *Trust `json:"trust,omitempty"`

	// Subscribe
	Types []string `json:"types,omitempty"`
	Scope *Scope   `json:"scope,omitempty"`
	// StoreID and KnownVersion name the configuration the subscriber already
	// holds. A server whose store has another ID, or that has compacted past
	// KnownVersion, answers with a full snapshot.
	StoreID      string `json:"storeId,omitempty"`
	KnownVersion uint64 `json:"knownVersion,omitempty"`

	// Ack / Nack: the Nonce and Version of the update; Error for a Nack.
	Nonce string `json:"nonce,omitempty"`
	Error string `json:"error,omitempty"`

	// Heartbeat
	Load float64 `json:"load,omitempty"`
	// EndpointLoad, agent to control plane, is this agent's in-flight
	// requests (L4: open connections) per endpoint key "ns/name", non-zero
	// entries only. Control plane to agent, in the heartbeat answer, it is
	// the sum over every other live agent: the load the receiver does not
	// see itself, which the edge-aware balancer adds to its own.
	EndpointLoad map[string]float64 `json:"endpointLoad,omitempty"`
	// Paths, agent to control plane, are this agent's paths to the peers
	// it talks to (at most MaxPathReports), for `fogmesh get paths`.
	Paths []PathReport `json:"paths,omitempty"`
	// VIPBindFailures, agent to control plane, are the virtual IP
	// addresses and ports this agent cannot bind (at most
	// MaxVIPBindFailures), for `fogmesh get nodes` and `fogmesh check`.
	VIPBindFailures []api.VIPBindFailure `json:"vipBindFailures,omitempty"`
	// Stats, agent to control plane (only if welcome lists FeatureStats),
	// are the agent's golden request counters, so the control plane shows
	// rates of agents whose admin API it cannot reach.
	Stats *StatsReport `json:"stats,omitempty"`
	// NodeStats, region to global control plane on a region link's
	// heartbeats (only if welcome lists FeatureRegionStats), are the
	// golden counters of the region's nodes as their agents reported
	// them: a node's first entry on a link is full, later ones carry the
	// rows that changed; at most MaxNodeStatRows rows in all.
	NodeStats []NodeStatsReport `json:"nodeStats,omitempty"`

	// Local
	Endpoints []api.Endpoint `json:"endpoints,omitempty"`

	// Sessions
	Sessions []api.Session `json:"sessions,omitempty"`

	// Audit: records of the node's audit chain, consecutive seqs, each one
	// JSON object as internal/audit encodes it (audit.EncodeBatch and
	// DecodeBatch); the sync protocol carries them without knowing them.
	Audit []json.RawMessage `json:"audit,omitempty"`
	// AuditSeq (welcome, auditAck) is the last seq of the node's chain the
	// control plane holds; the agent ships from AuditSeq+1.
	AuditSeq uint64 `json:"auditSeq,omitempty"`
	// AuditHash (welcome; auditAck on a region link) is the hash of the
	// record at AuditSeq, so the sender can tell whether its own chain
	// continues the one held.
	AuditHash string `json:"auditHash,omitempty"`
	// AuditRestart (audit) says the batch starts the node's chain anew
	// from seq 1 (its state was reset): the control plane archives the
	// chain it holds and keeps the new one.
	AuditRestart bool `json:"auditRestart,omitempty"`
	// AuditChain (audit and auditAck on a region link) names the chain a
	// regional control plane ships up: a node of its region, or its own
	// with AuditControl. AuditKey (audit) is the PKIX DER public key that
	// signs the chain's checkpoints. An audit frame without records asks
	// only for the auditAck: the last seq (AuditSeq, AuditHash) held.
	AuditChain   string `json:"auditChain,omitempty"`
	AuditControl bool   `json:"auditControl,omitempty"`
	AuditKey     []byte `json:"auditKey,omitempty"`
	// Features (welcome) lists what the control plane supports beyond
	// ProtocolVersion 1, e.g. FeatureAudit.
	Features []string `json:"features,omitempty"`

	// SVID (svid): the workload identity a CSR asks for.
	SVID *SVIDRequest `json:"svid,omitempty"`
	// SVIDBatch (svidIssued, in answer to SVIDRequest.Batch) holds the
	// chains (DER, leaf first) that follow the one in Certificates, in
	// order of validity: all for the CSR's key, each leaf valid from half a
	// workload TTL after the one before (SVIDChains reads them).
	SVIDBatch [][][]byte `json:"svidBatch,omitempty"`

	// Welcome, Update
	Version uint64 `json:"version,omitempty"`
	// Full marks a snapshot: the subscriber replaces everything it holds of
	// the subscribed types with Resources.
	Full      bool          `json:"full,omitempty"`
	Resources []Resource    `json:"resources,omitempty"`
	Removed   []ResourceRef `json:"removed,omitempty"`
	// Chunk and Chunks (update) split one update into Chunks consecutive
	// frames, Chunk 1 to Chunks, each with the same Nonce, Version,
	// StoreID and Full and a share of Resources and Removed; the receiver
	// applies the update when chunk Chunks arrived. Both are 0 (absent)
	// in an update sent whole, which is how every update that fits
	// ChunkBytes and ChunkItems is sent.
	Chunk  int `json:"chunk,omitempty"`
	Chunks int `json:"chunks,omitempty"`
	// ScopeAdded (update, only with FeatureScopeAdd) names the scope
	// entries ("ns/name", "ns/*") a later subscribe added that this update
	// answers: after applying it the subscriber holds everything of those
	// entries, so a service among them it does not hold does not exist
	// (at Version). Every chunk of a chunked update repeats it.
	ScopeAdded []string `json:"scopeAdded,omitempty"`
	// HeartbeatMillis tells the agent how often to send heartbeats.
	HeartbeatMillis int64 `json:"heartbeatMillis,omitempty"`
}

// Trust is what an agent trusts: the roots of its own and of federated
// trust domains, and the node identities it must refuse.
type Trust struct {
	// TrustDomain is the control plane's own trust domain.
	TrustDomain string `json:"trustDomain"`
	// Bundles maps a trust domain to its roots (DER), the own one included.
	// During a CA rotation the own bundle holds the old and the new root.
	Bundles map[string][][]byte `json:"bundles"`
	// Revoked lists revoked node SPIFFE IDs.
	Revoked []string `json:"revoked,omitempty"`
	// GossipKey (32 bytes) encrypts and authenticates the agents' liveness
	// gossip (memberlist's AES-GCM keyring), so only joined nodes take
	// part. The control plane replaces it when a node is revoked.
	GossipKey []byte `json:"gossipKey,omitempty"`
}

// Scope limits a subscription. Empty means everything.
type Scope struct {
	// Region limits nodes and endpoints to one region (a regional control
	// plane subscribing to the global one). Services are always sent.
	Region string `json:"region,omitempty"`
	// Services limits services and what belongs to them (endpoints,
	// routes, destination policies, sessions) to these "namespace/name"
	// keys ("namespace/*": every service of the namespace), and nodes to
	// the subscriber's own and those hosting an endpoint in scope.
	// Authorization policies are always sent. Empty means every service.
	// A control plane that predates it ignores it and sends everything.
	Services []string `json:"services,omitempty"`
}

// ResourceRef names a resource: Type and Name ("namespace/name", or the node
// name for nodes).
type ResourceRef struct {
	Type string `json:"type"`
	Name string `json:"name"`
}

// Resource is a named, versioned resource. Body is the JSON of the api type.
type Resource struct {
	ResourceRef
	Version uint64          `json:"version"`
	Body    json.RawMessage `json:"body"`
}

// ErrFrameTooLarge is returned for a length prefix above MaxFrame.
var ErrFrameTooLarge = errors.New("wire: frame too large")

// Write writes one frame.
func Write(w io.Writer, m *Message) error {
	_, err := WriteFrame(w, m)
	return err
}

// WriteFrame writes one frame and returns the length of its body (the
// encoded Message), which a sender may record.
func WriteFrame(w io.Writer, m *Message) (int, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return 0, fmt.Errorf("wire: encode %s: %w", m.Type, err)
	}
	if len(b) > MaxFrame {
		return len(b), ErrFrameTooLarge
	}
	buf := make([]byte, 4+len(b))
	binary.BigEndian.PutUint32(buf, uint32(len(b)))
	copy(buf[4:], b)
	_, err = w.Write(buf)
	return len(b), err
}

// Reader reads frames.
type Reader struct {
	r   *bufio.Reader
	max int
}

// NewReader returns a frame reader over r.
func NewReader(r io.Reader) *Reader { return &Reader{r: bufio.NewReader(r), max: MaxFrame} }

// NewReaderSize is NewReader with a read buffer of size bytes (at least
// 16). Frames longer than the buffer are read past it. The control plane
// holds one reader per agent, over TLS connections that buffer a record
// themselves: 4 KiB each was 40 MB at 10,000 agents.
func NewReaderSize(r io.Reader, size int) *Reader {
	return &Reader{r: bufio.NewReaderSize(r, size), max: MaxFrame}
}

// Read reads and decodes one frame. A clean EOF before a frame returns
// io.EOF; a truncated frame returns io.ErrUnexpectedEOF.
func (fr *Reader) Read() (*Message, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(fr.r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > uint32(fr.max) {
		return nil, fmt.Errorf("%w: %d bytes", ErrFrameTooLarge, n)
	}
	if n == 0 {
		return nil, errors.New("wire: empty frame")
	}
	// Grow the buffer as bytes arrive: a length prefix alone must not make
	// an unauthenticated peer cost MaxFrame of memory.
	var body bytes.Buffer
	if got, err := io.CopyN(&body, fr.r, int64(n)); err != nil {
		if err == io.EOF || got < int64(n) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return Decode(body.Bytes())
}

// Decode decodes a frame body and checks that it is a known message type.
func Decode(body []byte) (*Message, error) {
	m := new(Message)
	if err := json.Unmarshal(body, m); err != nil {
		return nil, fmt.Errorf("wire: decode: %w", err)
	}
	switch m.Type {
	case TypeHello, TypeSubscribe, TypeAck, TypeNack, TypeHeartbeat, TypeLocal, TypeSessions, TypeAudit,
		TypeWelcome, TypeUpdate, TypeError, TypeAuditAck, TypeRenew, TypeJoin, TypeCert, TypeJoined, TypeTrust, TypeSVID, TypeSVIDIssued:
	default:
		return nil, fmt.Errorf("wire: unknown message type %q", m.Type)
	}
	if len(m.SVIDBatch) > 0 {
		if _, err := SVIDChains(m); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// SVIDChains returns the certificate chains of an svidIssued answer:
// Certificates, then each of SVIDBatch. It refuses more than MaxSVIDBatch
// chains, an empty or longer than MaxSVIDChain chain, an empty certificate,
// and a batch without a first chain.
func SVIDChains(m *Message) ([][][]byte, error) {
	if len(m.Certificates) == 0 {
		if len(m.SVIDBatch) > 0 {
			return nil, errors.New("wire: svid batch without a first certificate chain")
		}
		return nil, errors.New("wire: no certificate")
	}
	if 1+len(m.SVIDBatch) > MaxSVIDBatch {
		return nil, fmt.Errorf("wire: svid batch of %d chains, at most %d", 1+len(m.SVIDBatch), MaxSVIDBatch)
	}
	out := make([][][]byte, 0, 1+len(m.SVIDBatch))
	for i, ch := range append([][][]byte{m.Certificates}, m.SVIDBatch...) {
		if len(ch) == 0 || len(ch) > MaxSVIDChain {
			return nil, fmt.Errorf("wire: svid chain %d holds %d certificates, want 1 to %d", i, len(ch), MaxSVIDChain)
		}
		for _, der := range ch {
			if len(der) == 0 {
				return nil, fmt.Errorf("wire: svid chain %d: empty certificate", i)
			}
		}
		out = append(out, ch)
	}
	return out, nil
}

// NewResource encodes an api object as a Resource.
func NewResource(o api.Object) (Resource, error) {
	b, err := json.Marshal(o)
	if err != nil {
		return Resource{}, err
	}
	return Resource{ResourceRef: RefOf(o), Version: o.GetMeta().Version, Body: b}, nil
}

// RefOf returns the ResourceRef of an object.
func RefOf(o api.Object) ResourceRef {
	m := o.GetMeta()
	if o.GetKind() == api.KindNode {
		return ResourceRef{Type: api.KindNode, Name: m.Name}
	}
	return ResourceRef{Type: o.GetKind(), Name: m.Key()}
}

// DecodeResource decodes and validates a Resource's body.
func DecodeResource(r Resource) (api.Object, error) {
	o, err := api.DecodeObject(r.Body)
	if err != nil {
		return nil, fmt.Errorf("resource %s %s: %w", r.Type, r.Name, err)
	}
	if got := RefOf(o); got != r.ResourceRef {
		return nil, fmt.Errorf("resource %s %s: body is %s %s", r.Type, r.Name, got.Type, got.Name)
	}
	return o, nil
}

// SVIDRequest names a workload identity:
// spiffe://<trust domain>/ns/<Namespace>/sa/<ServiceAccount>.
type SVIDRequest struct {
	Namespace      string `json:"namespace"`
	ServiceAccount string `json:"serviceAccount"`
	// Batch asks for a batch (see SVIDBatch); only sent to a control
	// plane that lists FeatureSVIDBatch. An older one ignores it and
	// answers with one certificate.
	Batch bool `json:"batch,omitempty"`
}
