package control

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/audit"
	"github.com/fogmesh/fogmesh/internal/syncproto"
	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// signedChain appends n records to node's chain in dir (a real log with
// key, so each call ends with a signed checkpoint) and returns the whole
// chain from seq 1.
func signedChain(t *testing.T, dir, node string, key *ecdsa.PrivateKey, n int) []audit.Record {
	t.Helper()
	l, err := audit.Open(audit.Config{Dir: dir, Node: node, Signer: key, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		l.Append(audit.Record{Kind: audit.KindAuthz, Actor: "spiffe://fogmesh.local/ns/a/sa/b", Action: "connect",
			Object: "demo/web", Decision: audit.Deny, Reason: strings.Repeat("r", i)})
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := audit.OpenReplica(dir, node)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	recs, err := r.ReadFrom(1, 100000)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// shipAudit sends records of the agent's chain from seq from on.
func (a *agentConn) shipAudit(recs []audit.Record, from uint64) {
	a.t.Helper()
	raw, err := audit.EncodeBatch(recs[from-1:])
	if err != nil {
		a.t.Fatal(err)
	}
	a.send(&wire.Message{Type: wire.TypeAudit, Audit: raw})
}

// heldRecords returns the records s holds of chain (a node's replica).
func heldRecords(t *testing.T, s *Server, chain string) []audit.Record {
	t.Helper()
	r, err := s.replica(chain)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := r.ReadFrom(1, 100000)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// sameChain fails unless got holds exactly want's records: seq 1..n, no
// gap, no duplicate, hash by hash.
func sameChain(t *testing.T, what string, got, want []audit.Record) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d records, want %d", what, len(got), len(want))
	}
	for i := range want {
		if got[i].Seq != uint64(i+1) || got[i].Hash != want[i].Hash {
			t.Fatalf("%s: record %d is seq %d hash %.12s, want seq %d hash %.12s", what, i, got[i].Seq, got[i].Hash, i+1, want[i].Hash)
		}
	}
}

// verifyAt checks the chain through s's admin API: intact, at lastSeq,
// with every checkpoint's signature checked.
func verifyAt(t *testing.T, s *Server, chain string, lastSeq uint64, signed bool) {
	t.Helper()
	code, ar := getAudit(t, s, "/v1/audit/"+chain+"?verify=1")
	if code != 200 || len(ar.Chains) != 1 {
		t.Fatalf("verify %s: %d %+v", chain, code, ar)
	}
	c := ar.Chains[0]
	if c.LastSeq != lastSeq || c.Intact == nil || !*c.Intact {
		t.Fatalf("verify %s: last seq %d (want %d), report %+v", chain, c.LastSeq, lastSeq, c.Report)
	}
	if signed && (c.Report.Checkpoints == 0 || c.Report.Signed != c.Report.Checkpoints) {
		t.Fatalf("verify %s: %d checkpoints, %d signatures verified", chain, c.Report.Checkpoints, c.Report.Signed)
	}
}

// TestRegionAuditChainsGoUp: a region ships its nodes' audit chains and its
// own up to the global plane, where they verify as at the region (hashes,
// and checkpoint signatures with the node's key sent along); records
// written while the link was cut arrive after it returns, resumed where the
// global plane was, with no gap and no duplicate, in bounded batches.
func TestRegionAuditChainsGoUp(t *testing.T) {
	limits := syncproto.DefaultLimits
	limits.ChunkItems = 4 // audit batches of at most 4 records
	g := startPlane(t, nil)
	proxy := startCutProxy(t, g.SyncAddr())
	east := startPlane(t, func(c *Config) {
		inRegion("east", proxy.addr())(c)
		c.VIPIndexMin, c.VIPIndexMax, c.regionLimits = 100, 199, limits
	})
	if east.cfg.Name != "control-east" {
		t.Fatalf("a regional plane's default name is %q", east.cfg.Name)
	}
	mustApply(t, east, svcDoc("web", "", 80))
	a := regionAgent(t, east, "e1", "east", "web/web-e1")
	key := newKey(t)
	east.SetAuditKey("e1", &key.PublicKey) // as its certificate's issue does
	dir := t.TempDir()
	recs := signedChain(t, dir, "e1", key, 5)
	a.shipAudit(recs, 1)

	waitHeld(t, g, "Node/e1", "east", nil)
	testenv.WaitFor(t, 10*time.Second, "the global plane to hold e1's chain", func() bool {
		seq, _, _ := g.heldChain("e1")
		return seq == uint64(len(recs))
	})
	sameChain(t, "e1 at the global plane", heldRecords(t, g, "e1"), recs)
	verifyAt(t, g, "e1", uint64(len(recs)), true)

	// Cut off, the region goes on taking records: the node's and its own.
	proxy.setCut(true)
	waitDisconnected(t, east)
	held, _, _ := g.heldChain("e1")
	recs = signedChain(t, dir, "e1", key, 9)
	a.shipAudit(recs, held+1)
	mustApply(t, east, svcDoc("web", "", 8080))
	testenv.WaitFor(t, 10*time.Second, "east to take e1's records while cut off", func() bool {
		seq, _, _ := east.auditLast("e1")
		return seq == uint64(len(recs))
	})
	if seq, _, _ := g.heldChain("e1"); seq != held {
		t.Fatalf("the global plane took seq %d of e1 while cut off", seq)
	}
	ownLast, _ := east.audit.log.Last()
	testenv.WaitFor(t, 10*time.Second, "east's own chain on disk", func() bool {
		r, err := east.audit.log.ReadFrom(ownLast, 1)
		return err == nil && len(r) == 1
	})

	proxy.setCut(false)
	testenv.WaitFor(t, 10*time.Second, "the global plane to hold the records written while cut off", func() bool {
		seq, _, _ := g.heldChain("e1")
		own, _, _ := g.heldChain("control-east")
		last, _ := east.audit.log.Last()
		return seq == uint64(len(recs)) && own == last && own >= ownLast
	})
	sameChain(t, "e1 at the global plane", heldRecords(t, g, "e1"), recs)
	verifyAt(t, g, "e1", uint64(len(recs)), true)
	own, err := east.audit.log.ReadFrom(1, 100000)
	if err != nil {
		t.Fatal(err)
	}
	sameChain(t, "east's own chain at the global plane", heldRecords(t, g, "control-east"), own)
	verifyAt(t, g, "control-east", uint64(len(own)), false)
	// Bounded batches: at most 4 records each. A batch counts when its ack
	// is back; one the global plane applied just before the cut, whose ack
	// the cut lost, is not counted (the region learns on the next link that
	// it is held there and does not send it again), so the count may stay
	// below the records held: only the bound per batch is checked.
	if b, r := east.mAuditUp.Get(), east.mAuditUpRecords.Get(); b == 0 || r > 4*b {
		t.Fatalf("%d records sent in %d batches; want at most 4 a batch", r, b)
	}
	for _, c := range east.Upstream().Audit {
		if c.Error != "" {
			t.Fatalf("chain %s refused: %s", c.Chain, c.Error)
		}
	}
}

// fakeRegion links to g as region, without a control plane behind it, to
// send what a real one would not.
type fakeRegion struct {
	*agentConn
}

func linkFakeRegion(t *testing.T, g *Server, region string, nodes ...string) *fakeRegion {
	t.Helper()
	c, err := net.Dial("tcp", g.SyncAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	f := &fakeRegion{&agentConn{t: t, c: c, r: wire.NewReader(c)}}
	f.send(&wire.Message{Type: wire.TypeHello, Protocol: wire.ProtocolVersion, Capabilities: []string{wire.CapRegion}, Scope: &wire.Scope{Region: region}})
	if m := f.recv(); m.Type != wire.TypeWelcome {
		t.Fatalf("want welcome, got %+v", m)
	}
	f.send(&wire.Message{Type: wire.TypeSubscribe, Scope: &wire.Scope{Region: region}})
	up := &wire.Message{Type: wire.TypeUpdate, Full: true, Version: 1, StoreID: "fake-" + region}
	for _, n := range nodes {
		node := &api.Node{APIVersion: api.APIVersion, Kind: api.KindNode, Meta: api.Meta{Name: n, Owner: region, Version: 1},
			Spec: api.NodeSpec{Site: "s1", Region: region, MeshAddress: "127.149.0.1:7072"}}
		if err := node.Validate(); err != nil {
			t.Fatal(err)
		}
		up.Resources = append(up.Resources, res(t, node))
	}
	f.send(up)
	for _, n := range nodes {
		waitHeld(t, g, "Node/"+n, region, nil)
	}
	return f
}

// audit sends an audit frame and returns the global plane's auditAck.
func (f *fakeRegion) audit(m *wire.Message) *wire.Message {
	f.t.Helper()
	m.Type = wire.TypeAudit
	f.send(m)
	for range 100 {
		got := f.recv()
		switch got.Type {
		case wire.TypeAuditAck:
			return got
		case wire.TypeError:
			f.t.Fatalf("the global plane ended the link: %s", got.Error)
		}
	}
	f.t.Fatal("no auditAck")
	return nil
}

func encode(t *testing.T, recs ...audit.Record) []json.RawMessage {
	t.Helper()
	raw, err := audit.EncodeBatch(recs)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// TestRegionAuditRefusals: a batch that breaks a chain (an edited record,
// a forged checkpoint signature, a fork), a chain of another region's node
// or of no node, or another's control plane chain is refused with an error
// saying why; the link stays up and the last good chain is kept.
func TestRegionAuditRefusals(t *testing.T) {
	g := startPlane(t, func(c *Config) { c.HeartbeatInterval = 2 * time.Second })
	west := linkFakeRegion(t, g, "west", "w1")
	east := linkFakeRegion(t, g, "east", "e1")
	key := newKey(t)
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	recs := signedChain(t, t.TempDir(), "e1", key, 3)
	good := len(recs)
	if ack := east.audit(&wire.Message{AuditChain: "e1", AuditKey: der, Audit: encode(t, recs...)}); ack.Error != "" || ack.AuditSeq != uint64(good) {
		t.Fatalf("good batch: %+v", ack)
	}
	if ack := west.audit(&wire.Message{AuditChain: "control-west", AuditControl: true, Audit: encode(t, signedChain(t, t.TempDir(), "control-west", newKey(t), 1)...)}); ack.Error != "" {
		t.Fatalf("west's own chain: %+v", ack)
	}
	more := signedChain(t, t.TempDir(), "e1", key, 3) // another chain of e1: a fork of it
	next := recs[good-1]
	edited := audit.Record{Seq: next.Seq + 1, Time: next.Time, Node: "e1", Kind: audit.KindAuthz, Action: "connect", Prev: next.Hash}
	edited.Hash, _ = edited.ComputeHash()
	edited.Reason = "edited after hashing"
	w1 := signedChain(t, t.TempDir(), "w1", newKey(t), 1)
	for _, c := range []struct {
		name string
		m    *wire.Message
		want string
	}{
		{"edited record", &wire.Message{AuditChain: "e1", Audit: encode(t, edited)}, "hash does not match"},
		{"forged checkpoint", &wire.Message{AuditChain: "e1", Audit: encode(t, forgedCheckpoint(t, next))}, "signature"},
		{"fork", &wire.Message{AuditChain: "e1", Audit: encode(t, more[good-1:]...)}, "fork"},
		{"another region's node", &wire.Message{AuditChain: "w1", Audit: encode(t, w1...)}, "node w1 is not in region east (region west owns it)"},
		{"a record of another node", &wire.Message{AuditChain: "e1", Audit: encode(t, w1...)}, `is a record of "w1"`},
		{"no such node", &wire.Message{AuditChain: "e9", Audit: encode(t, signedChain(t, t.TempDir(), "e9", key, 1)...)}, "no node e9 of region east"},
		{"another region's control plane chain", &wire.Message{AuditChain: "control-west", AuditControl: true}, "control plane chain of region west"},
		{"the global plane's name", &wire.Message{AuditChain: "control", AuditControl: true}, "the global control plane has that name"},
		{"an archive", &wire.Message{AuditChain: "e1.archived-1", Audit: encode(t, recs...)}, "not a DNS label"},
		{"bad key", &wire.Message{AuditChain: "e1", AuditKey: []byte("nope"), Audit: encode(t, recs...)}, "key"},
	} {
		ack := east.audit(c.m)
		if !strings.Contains(ack.Error, c.want) {
			t.Errorf("%s: auditAck %q, want it to say %q", c.name, ack.Error, c.want)
		}
	}
	// A refused batch that brings another key leaves the chain's key.
	other := newKey(t)
	otherDER, err := x509.MarshalPKIXPublicKey(&other.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if ack := east.audit(&wire.Message{AuditChain: "e1", AuditKey: otherDER, Audit: encode(t, more[good-1:]...)}); ack.Error == "" {
		t.Fatal("a fork under another key was taken")
	}
	g.mu.Lock()
	k := g.audit.keys["e1"]
	g.mu.Unlock()
	if d, _ := x509.MarshalPKIXPublicKey(k); string(d) != string(der) {
		t.Fatal("a refused batch replaced e1's audit key")
	}
	// A chain held under a name no region has pinned (a node removed, or
	// not registered yet) is not given to a region as its control chain,
	// not even to a question; and a region has one control chain.
	x1 := signedChain(t, t.TempDir(), "x1", newKey(t), 2)
	if _, err := g.ingestAudit("x1", x1); err != nil {
		t.Fatal(err)
	}
	for _, m := range []*wire.Message{
		{AuditChain: "x1", AuditControl: true},
		{AuditChain: "x1", AuditControl: true, AuditRestart: true, Audit: encode(t, signedChain(t, t.TempDir(), "x1", newKey(t), 1)...)},
	} {
		if ack := east.audit(m); !strings.Contains(ack.Error, "held here already") || ack.AuditSeq != 0 {
			t.Fatalf("east took over x1's chain: %+v", ack)
		}
	}
	sameChain(t, "x1 after a region asked for it", heldRecords(t, g, "x1"), x1)
	if ack := east.audit(&wire.Message{AuditChain: "control-east", AuditControl: true, Audit: encode(t, signedChain(t, t.TempDir(), "control-east", newKey(t), 1)...)}); ack.Error != "" {
		t.Fatalf("east's own chain: %+v", ack)
	}
	if ack := east.audit(&wire.Message{AuditChain: "control-east2", AuditControl: true, Audit: encode(t, signedChain(t, t.TempDir(), "control-east2", newKey(t), 1)...)}); !strings.Contains(ack.Error, "one per region") {
		t.Fatalf("east's second control chain: %+v", ack)
	}

	sameChain(t, "e1 after refused batches", heldRecords(t, g, "e1"), recs)
	verifyAt(t, g, "e1", uint64(good), true)
	if seq, _, _ := g.heldChain("w1"); seq != 0 {
		t.Fatalf("east wrote %d records into west's node's chain", seq)
	}
	// The link is still up, and the chain resumes where it was held.
	if ack := east.audit(&wire.Message{AuditChain: "e1"}); ack.Error != "" || ack.AuditSeq != uint64(good) || ack.AuditHash != recs[good-1].Hash {
		t.Fatalf("after refusals: %+v", ack)
	}
}

// TestRegionAuditTamperedAtRegion: a record of a node's chain edited and
// rehashed on the region's disk while the link was cut does not chain at
// the global plane: the batch is refused, the region's status says why,
// the global plane keeps the last good chain, and the region's own chain
// still goes up.
func TestRegionAuditTamperedAtRegion(t *testing.T) {
	limits := syncproto.DefaultLimits
	limits.ChunkItems = 4
	g := startPlane(t, nil)
	proxy := startCutProxy(t, g.SyncAddr())
	east := startPlane(t, func(c *Config) { inRegion("east", proxy.addr())(c); c.regionLimits = limits })
	a := regionAgent(t, east, "e1", "east")
	key := newKey(t)
	east.SetAuditKey("e1", &key.PublicKey)
	dir := t.TempDir()
	recs := signedChain(t, dir, "e1", key, 3)
	a.shipAudit(recs, 1)
	good := uint64(len(recs))
	testenv.WaitFor(t, 10*time.Second, "the global plane to hold e1's chain", func() bool {
		seq, _, _ := g.heldChain("e1")
		return seq == good
	})

	proxy.setCut(true)
	waitDisconnected(t, east)
	recs = signedChain(t, dir, "e1", key, 6)
	a.shipAudit(recs, good+1)
	testenv.WaitFor(t, 10*time.Second, "east to take e1's records", func() bool {
		seq, _, _ := east.auditLast("e1")
		return seq == uint64(len(recs))
	})
	// Edit seq good+2 on east's disk and rehash it: each line still
	// decodes, but the next record no longer chains to it.
	path := filepath.Join(east.auditNodesDir(), "e1", "audit.log")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(string(b), "\n")
	r, err := audit.DecodeLine([]byte(lines[good+1]))
	if err != nil || r.Seq != good+2 {
		t.Fatalf("line %d: %+v %v", good+1, r, err)
	}
	r.Reason = "edited at the region"
	r.Hash, _ = r.ComputeHash()
	line, _ := r.MarshalLine()
	lines[good+1] = string(line)
	if err := os.WriteFile(path, []byte(strings.Join(lines, "")), 0o600); err != nil {
		t.Fatal(err)
	}
	mustApply(t, east, svcDoc("web", "", 80)) // and a record of east's own
	ownLast, _ := east.audit.log.Last()

	proxy.setCut(false)
	testenv.WaitFor(t, 10*time.Second, "east to report the refused batch", func() bool {
		for _, c := range east.Upstream().Audit {
			if c.Chain == "e1" && strings.Contains(c.Error, "does not chain") {
				return true
			}
		}
		return false
	})
	testenv.WaitFor(t, 10*time.Second, "east's own chain to go up", func() bool {
		own, _, _ := g.heldChain("control-east")
		return own >= ownLast
	})
	if seq, _, _ := g.heldChain("e1"); seq != good {
		t.Fatalf("the global plane holds e1 to seq %d, want the last good %d", seq, good)
	}
	verifyAt(t, g, "e1", good, true)
}

// FuzzDecodeRegionAudit: no audit frame from a region crashes its check,
// and what it accepts names one chain, a DNS label, whose records are all
// of it, in consecutive seqs, within the bound.
func FuzzDecodeRegionAudit(f *testing.F) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	dir := f.TempDir()
	l, err := audit.Open(audit.Config{Dir: dir, Node: "e1", Signer: key, NoSync: true})
	if err != nil {
		f.Fatal(err)
	}
	l.Append(audit.Record{Kind: audit.KindAuthz, Action: "connect", Decision: audit.Deny})
	l.Close()
	rep, err := audit.OpenReplica(dir, "e1")
	if err != nil {
		f.Fatal(err)
	}
	recs, _ := rep.ReadFrom(1, 10)
	rep.Close()
	raw, _ := audit.EncodeBatch(recs)
	for _, m := range []*wire.Message{
		{Type: wire.TypeAudit, AuditChain: "e1", AuditKey: der, Audit: raw},
		{Type: wire.TypeAudit, AuditChain: "e1", AuditRestart: true, Audit: raw[1:]},
		{Type: wire.TypeAudit, AuditChain: "e2", Audit: raw},
	} {
		b, _ := json.Marshal(m)
		f.Add(b)
	}
	for _, m := range []*wire.Message{
		{Type: wire.TypeAudit, AuditChain: "e1"},
		{Type: wire.TypeAudit, AuditChain: "control-east", AuditControl: true, AuditKey: der},
		{Type: wire.TypeAudit, AuditChain: "e1", AuditRestart: true},
		{Type: wire.TypeAudit, AuditChain: "e1.archived-1"},
		{Type: wire.TypeAudit, AuditChain: "e1", AuditKey: []byte{0x30, 0x01}},
	} {
		b, _ := json.Marshal(m)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		m, err := wire.Decode(body)
		if err != nil {
			return
		}
		a, err := decodeRegionAudit(m)
		if err != nil {
			return
		}
		if !regionRE.MatchString(a.chain) || len(a.recs) > maxRegionAuditRecords || (a.key == nil) != (len(m.AuditKey) == 0) {
			t.Fatalf("accepted chain %q with %d records", a.chain, len(a.recs))
		}
		for i, r := range a.recs {
			if r.Node != a.chain || i > 0 && r.Seq != a.recs[i-1].Seq+1 || a.restart && a.recs[0].Seq != 1 {
				t.Fatalf("accepted record %d: %+v", i, r)
			}
		}
	})
}

// TestRegionAuditChainRestart: a node whose state was reset starts a new
// chain at its region, which archives the old one; the region sends the
// new chain up as a restart, and the global plane archives its copy of the
// old one too (nothing deleted) and holds the new one.
func TestRegionAuditChainRestart(t *testing.T) {
	g := startPlane(t, nil)
	east := startPlane(t, inRegion("east", g.SyncAddr()))
	a := regionAgent(t, east, "e1", "east")
	key := newKey(t)
	east.SetAuditKey("e1", &key.PublicKey)
	old := signedChain(t, t.TempDir(), "e1", key, 3)
	a.shipAudit(old, 1)
	testenv.WaitFor(t, 10*time.Second, "the global plane to hold e1's first chain", func() bool {
		seq, _, _ := g.heldChain("e1")
		return seq == uint64(len(old))
	})

	fresh := signedChain(t, t.TempDir(), "e1", key, 6) // longer, and another chain
	a.send(&wire.Message{Type: wire.TypeAudit, AuditRestart: true, Audit: encode(t, fresh...)})
	testenv.WaitFor(t, 10*time.Second, "the global plane to hold e1's new chain", func() bool {
		_, hash, _ := g.heldChain("e1")
		return hash == fresh[len(fresh)-1].Hash
	})
	sameChain(t, "e1's new chain at the global plane", heldRecords(t, g, "e1"), fresh)
	verifyAt(t, g, "e1", uint64(len(fresh)), true)
	_, ar := getAudit(t, g, "/v1/audit?verify=1")
	archived := false
	for _, c := range ar.Chains {
		if c.Source == "archived" && strings.HasPrefix(c.Node, "e1.archived-") {
			archived = c.LastSeq == uint64(len(old)) && c.Intact != nil && *c.Intact
		}
	}
	if !archived {
		t.Fatalf("the global plane did not keep e1's old chain, intact, as an archive: %+v", ar.Chains)
	}
}

// TestRegionalNameKeepsOldChain: a regional plane's default name is
// control-REGION, but one whose own chain was begun under the old default
// "control" keeps that name, so it still opens its chain and starts.
func TestRegionalNameKeepsOldChain(t *testing.T) {
	dir := t.TempDir()
	l, err := audit.Open(audit.Config{Dir: filepath.Join(dir, "audit", "control"), Node: "control", NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	l.Append(audit.Record{Kind: audit.KindAdmin, Actor: "test", Action: "apply"})
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	g := startPlane(t, nil)
	old := startPlane(t, func(c *Config) { c.StateDir = dir; inRegion("east", g.SyncAddr())(c) })
	fresh := startPlane(t, inRegion("west", g.SyncAddr()))
	if old.cfg.Name != "control" || fresh.cfg.Name != "control-west" {
		t.Fatalf("names %q and %q, want control (an old chain) and control-west", old.cfg.Name, fresh.cfg.Name)
	}
}
