// Audit chains up a region link (docs/regions.md): a regional control
// plane ships its own audit chain and its nodes' chains to the global one,
// each resumed from the last seq the global plane holds, in batches within
// the link's chunk bounds; the global plane checks every batch as it
// checks an agent's (Replica.Append: hashes, chaining, checkpoint
// signatures) and takes a chain only from the region that owns its node.

package control

import (
	"bufio"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/audit"
	"github.com/fogmesh/fogmesh/internal/store"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// keyAuditRegion + chain: the region whose control plane's own chain the
// global plane holds under that name (secure bucket), so no other region
// writes into it.
const keyAuditRegion = "audit-region/"

// keyAuditRegionName + region: the name of that region's control plane
// chain; one per region, so a region cannot claim other names.
const keyAuditRegionName = "audit-region-name/"

// maxRegionAuditRecords bounds the records of one audit frame a global
// plane takes from a region.
const maxRegionAuditRecords = wire.ChunkItems

// regionAudit is an audit frame from a region link, decoded and checked.
type regionAudit struct {
	chain   string
	control bool // the regional control plane's own chain
	restart bool
	key     crypto.PublicKey // nil: none sent
	keyDER  []byte
	recs    []audit.Record
}

// decodeRegionAudit checks an audit frame from a region before anything of
// it is used: a chain name that is a DNS label (as node names are; never
// an archive's), at most maxRegionAuditRecords records, each of that
// chain, in consecutive seqs, a restart starting at seq 1, and a key that
// parses. The chains' hashes and signatures are checked by the replica.
func decodeRegionAudit(m *wire.Message) (*regionAudit, error) {
	if m == nil || m.Type != wire.TypeAudit {
		return nil, errors.New("not an audit frame")
	}
	if !regionRE.MatchString(m.AuditChain) {
		return nil, fmt.Errorf("audit chain %q is not a DNS label", m.AuditChain)
	}
	if len(m.Audit) > maxRegionAuditRecords {
		return nil, fmt.Errorf("audit chain %s: %d records in one frame, at most %d", m.AuditChain, len(m.Audit), maxRegionAuditRecords)
	}
	a := &regionAudit{chain: m.AuditChain, control: m.AuditControl, restart: m.AuditRestart}
	if len(m.AuditKey) > 0 {
		pub, err := x509.ParsePKIXPublicKey(m.AuditKey)
		if err != nil {
			return nil, fmt.Errorf("audit chain %s: key: %w", a.chain, err)
		}
		a.key, a.keyDER = pub, m.AuditKey
	}
	recs, err := audit.DecodeBatch(m.Audit)
	if err != nil {
		return nil, fmt.Errorf("audit chain %s: %w", a.chain, err)
	}
	for i := range recs {
		r := &recs[i]
		if r.Node != a.chain {
			return nil, fmt.Errorf("audit chain %s: seq %d is a record of %q", a.chain, r.Seq, r.Node)
		}
		if i > 0 && r.Seq != recs[i-1].Seq+1 {
			return nil, fmt.Errorf("audit chain %s: seq %d follows seq %d", a.chain, r.Seq, recs[i-1].Seq)
		}
	}
	if a.restart && (len(recs) == 0 || recs[0].Seq != 1) {
		return nil, fmt.Errorf("audit chain %s: a restart must begin at seq 1", a.chain)
	}
	a.recs = recs
	return a, nil
}

// takeRegionAudit is the global plane's answer to an audit frame of
// region: the chain's last seq and hash held, and why the batch was
// refused, if it was. A refused batch leaves the chain as it was.
func (s *Server) takeRegionAudit(region string, m *wire.Message) *wire.Message {
	ack := &wire.Message{Type: wire.TypeAuditAck, AuditChain: m.AuditChain}
	a, err := decodeRegionAudit(m)
	if err != nil {
		s.audit.mInvalid.Inc()
	} else if err = s.regionOwnsChain(region, a); err == nil {
		err = s.takeChain(a)
		// The chain is region's: say what is held of it, refused or not,
		// so the region resumes there.
		if seq, hash, lerr := s.heldChain(a.chain); lerr == nil {
			ack.AuditSeq, ack.AuditHash = seq, hash
		}
	}
	if err != nil {
		s.log.Warn("control: region audit batch refused", "region", region, "chain", m.AuditChain, "records", len(m.Audit), "err", err)
		ack.Error = "audit: " + err.Error()
	}
	return ack
}

// heldChain returns the last seq and hash held of chain, without opening
// (and so creating) a replica of a chain never taken.
func (s *Server) heldChain(chain string) (uint64, string, error) {
	if _, err := os.Stat(filepath.Join(s.auditNodesDir(), chain)); err != nil {
		return 0, audit.Genesis, nil
	}
	return s.auditLast(chain)
}

// takeChain stores a region's batch of a chain it owns.
func (s *Server) takeChain(a *regionAudit) (err error) {
	if len(a.recs) == 0 {
		return nil // a question for the last seq held
	}
	if a.key != nil {
		s.mu.Lock()
		cur := s.audit.keys[a.chain]
		s.mu.Unlock()
		if der, _ := x509.MarshalPKIXPublicKey(cur); cur == nil || string(der) != string(a.keyDER) {
			// The batch's checkpoints are checked with the key it brings;
			// a refused batch must not leave that key behind, or the
			// checkpoints held would no longer verify.
			s.SetAuditKey(a.chain, a.key)
			if cur != nil {
				defer func() {
					if err != nil {
						s.SetAuditKey(a.chain, cur)
					}
				}()
			}
		}
	}
	if a.restart {
		if err := s.restartAuditChain(a.chain, a.recs); err != nil {
			return err
		}
	}
	_, err = s.ingestAudit(a.chain, a.recs)
	return err
}

// regionOwnsChain refuses a chain that is not region's to write: a node's
// chain needs the node owned by region; the regional control plane's own
// chain needs a name that no node of another owner, no other region's
// control plane and not this control plane has (the first region to ship
// a control chain under a name keeps it).
func (s *Server) regionOwnsChain(region string, a *regionAudit) error {
	kv, isNode, err := s.st.Get(api.KindNode + "/" + a.chain)
	if err != nil {
		return err
	}
	if isNode && ownerOf(kv) != region {
		return fmt.Errorf("chain %s: node %s is not in region %s (%s owns it)", a.chain, a.chain, region, ownerName(ownerOf(kv)))
	}
	if !a.control {
		if !isNode {
			return fmt.Errorf("chain %s: no node %s of region %s here", a.chain, a.chain, region)
		}
		if pinned, err := s.st.GetSecure(keyAuditRegion + a.chain); err != nil {
			return err
		} else if pinned != nil && string(pinned) != region {
			return fmt.Errorf("chain %s is the control plane chain of region %s", a.chain, pinned)
		}
		return nil
	}
	if a.chain == s.cfg.Name {
		return fmt.Errorf("chain %s: the global control plane has that name; give region %s's control plane another name", a.chain, region)
	}
	pinned, err := s.st.GetSecure(keyAuditRegion + a.chain)
	switch {
	case err != nil:
		return err
	case pinned != nil && string(pinned) != region:
		return fmt.Errorf("chain %s is the control plane chain of region %s; give region %s's control plane another name", a.chain, pinned, region)
	case pinned != nil:
		return nil
	}
	// Not pinned: a name whose chain is held already (a node's, removed
	// or not registered yet) is not given to a region, and a region has
	// one control plane chain. A question pins nothing.
	if _, err := os.Stat(filepath.Join(s.auditNodesDir(), a.chain)); err == nil {
		return fmt.Errorf("chain %s: a chain of that name is held here already; give region %s's control plane another name", a.chain, region)
	}
	if len(a.recs) == 0 {
		return nil
	}
	return s.st.UpdateSecure(func(tx *store.SecureTx) error {
		if p := tx.Get(keyAuditRegion + a.chain); p != nil && string(p) != region {
			return fmt.Errorf("chain %s is the control plane chain of region %s", a.chain, p)
		}
		if name := tx.Get(keyAuditRegionName + region); name != nil && string(name) != a.chain {
			return fmt.Errorf("chain %s: region %s's control plane chain is %s (one per region)", a.chain, region, name)
		}
		if err := tx.Put(keyAuditRegionName+region, []byte(a.chain)); err != nil {
			return err
		}
		return tx.Put(keyAuditRegion+a.chain, []byte(region))
	})
}

// ownChainNode names the node of the control plane's own audit chain in
// stateDir, from its first record ("" if it has none yet).
func ownChainNode(stateDir string) string {
	f, err := os.Open(filepath.Join(stateDir, "audit", "control", "audit.log"))
	if err != nil {
		return ""
	}
	defer f.Close()
	line, _ := bufio.NewReader(io.LimitReader(f, 1<<20)).ReadBytes('\n')
	if r, _ := audit.DecodeLine(line); r != nil {
		return r.Node
	}
	return ""
}

// auditShip is the region's state of one chain on the current link.
type auditShip struct {
	acked uint64 // the last seq the global plane holds
	hash  string // its hash there
	known bool   // acked and hash were answered on this link
	stuck bool   // refused on this link: not sent again until the next
}

// AuditUpStatus is one chain a regional plane ships up.
type AuditUpStatus struct {
	Chain string `json:"chain"`
	// Acked is the last seq the global plane holds; Error why it refused
	// the last batch, if it did (the chain is retried on the next link).
	Acked uint64 `json:"acked"`
	Error string `json:"error,omitempty"`
}

// auditChains lists the chains the region ships: its own, and those of
// the nodes in nodes (the region's nodes already sent up) that it holds.
func (u *upLink) auditChains(nodes map[string]bool) []string {
	out := []string{u.s.cfg.Name}
	ents, err := os.ReadDir(u.s.auditNodesDir())
	if err != nil {
		return out
	}
	for _, e := range ents {
		if n := e.Name(); e.IsDir() && !isArchive(n) && nodes[n] && n != u.s.cfg.Name {
			out = append(out, n)
		}
	}
	return out
}

// regionNodes returns the nodes the region owns, as stored now.
func (u *upLink) regionNodes() map[string]bool {
	out := map[string]bool{}
	kvs, _, err := u.s.st.List(api.KindNode + "/")
	if err != nil {
		u.s.log.Warn("control: list the region's nodes for their audit chains", "err", err)
	}
	for _, kv := range kvs {
		if ownerOf(kv) == u.region {
			out[strings.TrimPrefix(kv.Key, api.KindNode+"/")] = true
		}
	}
	return out
}

// chainSource reads one chain at the region.
type chainSource struct {
	last    func() (uint64, string)
	read    func(seq uint64, max int) ([]audit.Record, error)
	key     crypto.PublicKey
	control bool
}

func (u *upLink) source(chain string) (chainSource, error) {
	s := u.s
	if chain == s.cfg.Name {
		return chainSource{last: s.audit.log.Last, read: s.audit.log.ReadFrom, key: signerKey(s.cfg.AuditSigner), control: true}, nil
	}
	r, err := s.replica(chain)
	if err != nil {
		return chainSource{}, err
	}
	s.mu.Lock()
	key := s.audit.keys[chain]
	s.mu.Unlock()
	return chainSource{last: r.Last, read: r.ReadFrom, key: key}, nil
}

// shipAudit sends what the global plane lacks of each chain, at most
// rounds batches of a chain per call; more reports whether some chain has
// more to send. Each batch waits for its auditAck (acks, from the reader).
func (u *upLink) shipAudit(ctx context.Context, rc *regionConn, acks <-chan *wire.Message, ships map[string]*auditShip, nodes map[string]bool) (more bool, err error) {
	const rounds = 16
	// At most this many round trips a call, questions included, so the
	// region's object updates (readiness, endpoints) go up between them
	// however many chains a new link has to ask about.
	budget := 64
	for _, chain := range u.auditChains(nodes) {
		if budget <= 0 {
			return true, nil
		}
		sh := ships[chain]
		if sh == nil {
			sh = &auditShip{}
			ships[chain] = sh
		}
		if sh.stuck {
			continue
		}
		src, err := u.source(chain)
		if err != nil {
			u.s.log.Warn("control: audit chain not shipped", "chain", chain, "err", err)
			continue
		}
		var keyDER []byte
		if src.key != nil {
			keyDER, _ = x509.MarshalPKIXPublicKey(src.key)
		}
		last, _ := src.last()
		if sh.known && sh.acked == last {
			continue
		}
		if !sh.known {
			// Ask where the global plane is in this chain.
			ack, err := u.auditRoundTrip(ctx, rc, acks, &wire.Message{Type: wire.TypeAudit, AuditChain: chain, AuditControl: src.control})
			if err != nil {
				return false, err
			}
			budget--
			if u.noteAuditAck(chain, sh, ack) {
				continue
			}
			sh.known = true
		}
		restart := false
		if sh.acked > 0 {
			// Does our chain continue the one held there? Not if it is
			// shorter or holds another record at its seq: this chain was
			// started anew here (the node's state was reset or restored
			// from a backup, or this plane's copy was cut), so it goes up
			// from seq 1 as a restart, and the global plane archives its
			// copy unless it ends within the batch (a resend): the break
			// is recorded there ("chain rolled back"), nothing is lost.
			got, err := src.read(sh.acked, 1)
			if sh.acked > last || err != nil || len(got) != 1 || got[0].Hash != sh.hash {
				restart, sh.acked = true, 0
			}
		}
		for i := 0; i < rounds && sh.acked < last; i++ {
			if budget <= 0 {
				return true, nil
			}
			recs, err := src.read(sh.acked+1, rc.limits.ChunkItems)
			if err != nil {
				// Unreadable here (a record edited on disk): say so, and
				// try again on the next link.
				u.noteAuditAck(chain, sh, &wire.Message{AuditSeq: sh.acked, AuditHash: sh.hash,
					Error: fmt.Sprintf("reading seq %d on of chain %s here: %v", sh.acked+1, chain, err)})
				break
			}
			raw, err := audit.EncodeBatch(recs)
			if err != nil || len(raw) == 0 {
				break
			}
			raw = withinBytes(raw, rc.limits.ChunkBytes)
			m := &wire.Message{Type: wire.TypeAudit, AuditChain: chain, AuditControl: src.control, AuditKey: keyDER, Audit: raw, AuditRestart: restart}
			ack, err := u.auditRoundTrip(ctx, rc, acks, m)
			if err != nil {
				return false, err
			}
			budget--
			u.s.mAuditUp.Inc()
			u.s.mAuditUpRecords.Add(len(raw))
			if u.noteAuditAck(chain, sh, ack) {
				break
			}
			if sh.acked > last {
				// Held there past our end, with our first records: the
				// chain here was cut, not started anew.
				u.noteAuditAck(chain, sh, &wire.Message{AuditSeq: sh.acked, AuditHash: sh.hash,
					Error: fmt.Sprintf("the upstream holds seq %d of chain %s, past its last seq %d here: the chain here was cut", sh.acked, chain, last)})
				break
			}
			restart = false
			if i == rounds-1 && sh.acked < last {
				more = true
			}
		}
	}
	return more, nil
}

// withinBytes keeps the first records of raw whose encoding stays within
// max bytes (at least one).
func withinBytes(raw []json.RawMessage, max int) []json.RawMessage {
	n := 0
	for i, r := range raw {
		if n += len(r) + 1; i > 0 && n > max {
			return raw[:i]
		}
	}
	return raw
}

// auditRoundTrip sends an audit frame and waits for its auditAck.
func (u *upLink) auditRoundTrip(ctx context.Context, rc *regionConn, acks <-chan *wire.Message, m *wire.Message) (*wire.Message, error) {
	if err := rc.write(m); err != nil {
		return nil, err
	}
	t := time.NewTimer(rc.timeout)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
			return nil, fmt.Errorf("no auditAck for chain %s within %s", m.AuditChain, rc.timeout)
		case ack := <-acks:
			if ack.AuditChain == m.AuditChain {
				return ack, nil
			}
		}
	}
}

// noteAuditAck takes an auditAck into sh and the link's status; it
// reports whether the batch was refused (the chain is then left alone
// until the next link).
func (u *upLink) noteAuditAck(chain string, sh *auditShip, ack *wire.Message) (refused bool) {
	sh.acked, sh.hash = ack.AuditSeq, ack.AuditHash
	u.mu.Lock()
	if u.audit == nil {
		u.audit = map[string]*AuditUpStatus{}
	}
	st := u.audit[chain]
	if st == nil {
		st = &AuditUpStatus{Chain: chain}
		u.audit[chain] = st
	}
	st.Acked, st.Error = ack.AuditSeq, ack.Error
	u.mu.Unlock()
	if ack.Error != "" {
		u.s.log.Warn("control: the upstream refused an audit batch; the chain is retried on the next link", "chain", chain, "held", ack.AuditSeq, "err", ack.Error)
		sh.stuck = true
		return true
	}
	return false
}

// auditStatus lists the chains shipped up, by name.
func (u *upLink) auditStatus() []AuditUpStatus {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := make([]AuditUpStatus, 0, len(u.audit))
	for _, st := range u.audit {
		out = append(out, *st)
	}
	slices.SortFunc(out, func(a, b AuditUpStatus) int { return strings.Compare(a.Chain, b.Chain) })
	return out
}
