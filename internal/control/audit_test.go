package control

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/audit"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/wire"
)

func getAudit(t *testing.T, s *Server, path string) (int, AuditResponse) {
	t.Helper()
	resp, err := http.Get("http://" + s.AdminAddr() + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var ar AuditResponse
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == 200 {
		if err := json.Unmarshal(b, &ar); err != nil {
			t.Fatalf("%s: %v: %s", path, err, b)
		}
	}
	if resp.StatusCode != 200 {
		t.Logf("%s: %d %s", path, resp.StatusCode, b)
	}
	return resp.StatusCode, ar
}

// nodeRecords writes n records of node's chain with a real log and returns
// them as the agent would ship them.
func nodeRecords(t *testing.T, node string, n int) []audit.Record {
	t.Helper()
	l, err := audit.Open(audit.Config{Dir: t.TempDir(), Node: node, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for i := range n {
		l.Append(audit.Record{Kind: audit.KindAuthz, Actor: "spiffe://fogmesh.local/ns/a/sa/b", Action: "connect",
			Object: "demo/hello", Decision: audit.Deny, Reason: strings.Repeat("x", i)})
	}
	if err := l.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	recs, err := l.ReadFrom(1, n)
	if err != nil || len(recs) != n {
		t.Fatalf("%d records, %v", len(recs), err)
	}
	return recs
}

func TestAuditAdminChangesAndNodeIngest(t *testing.T) {
	dir := t.TempDir()
	s := startServer(t, dir)
	if code, body := applyDoc(t, s, helloSvc); code != 200 {
		t.Fatal(code, body)
	}
	req, _ := http.NewRequest("DELETE", "http://"+s.AdminAddr()+"/v1/services/demo/hello", nil)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 200 {
		t.Fatal(resp, err)
	} else {
		resp.Body.Close()
	}
	// The control plane's own chain has both changes, on disk when the
	// admin call returned.
	code, ar := getAudit(t, s, "/v1/audit?verify=1")
	if code != 200 || len(ar.Chains) != 1 {
		t.Fatal(code, ar)
	}
	own := ar.Chains[0]
	if own.Source != "control" || own.Node != "control" || own.LastSeq != 2 || own.Intact == nil || !*own.Intact {
		t.Fatalf("own chain %+v", own)
	}
	recs, err := s.audit.log.ReadFrom(1, 10)
	if err != nil || len(recs) != 2 {
		t.Fatal(recs, err)
	}
	if r := recs[0]; r.Kind != audit.KindAdmin || r.Action != "apply" || r.Object != "Service/demo/hello" || r.Actor != "ip:127.0.0.1" {
		t.Fatalf("apply record %+v", r)
	}
	if r := recs[1]; r.Action != "delete" || r.Object != "Service/demo/hello" {
		t.Fatalf("delete record %+v", r)
	}
	// Other packages (the PKI) record through Server.Audit.
	if err := s.Audit(audit.Record{Kind: audit.KindCert, Actor: "node:n1", Action: "issue", Object: "serial:01"}); err != nil {
		t.Fatal(err)
	}

	// A node ships its records.
	a := dialAgentWelcome(t, s, "n1", 0)
	nrecs := nodeRecords(t, "n1", 10)
	a.send(&wire.Message{Type: wire.TypeAudit, Audit: encodeBatch(t, nrecs[:5])})
	if m := a.recv(); m.Type != wire.TypeAuditAck || m.AuditSeq != 5 || m.Error != "" {
		t.Fatalf("ack %+v", m)
	}
	forged := append([]audit.Record(nil), nrecs[5:8]...)
	forged[1].Decision = audit.Allow // edited, hash left
	rehashed := append([]audit.Record(nil), nrecs[5:8]...)
	rehashed[0].Decision = audit.Allow
	rehashed[0].Hash, _ = rehashed[0].ComputeHash() // a fork
	for _, c := range []struct {
		batch []audit.Record
		want  string
	}{
		{forged, "audit: invalid record"},
		{rehashed, "audit: fork"},
		{nrecs[7:], "audit: gap: got seq 8, want 6"},
	} {
		a.send(&wire.Message{Type: wire.TypeAudit, Audit: encodeBatch(t, c.batch)})
		m := a.recv()
		if m.Type != wire.TypeAuditAck || m.AuditSeq != 5 || !strings.HasPrefix(m.Error, c.want) {
			t.Fatalf("want refusal %q, got %+v", c.want, m)
		}
	}
	a.send(&wire.Message{Type: wire.TypeAudit, Audit: encodeBatch(t, nrecs[5:])})
	if m := a.recv(); m.AuditSeq != 10 || m.Error != "" {
		t.Fatalf("ack %+v", m)
	}
	metrics := getBody(t, "http://"+s.AdminAddr()+"/metrics")
	for _, want := range []string{`fogmesh_control_audit_refused_total{reason="gap"} 1`, `fogmesh_control_audit_refused_total{reason="fork"} 1`,
		`fogmesh_control_audit_refused_total{reason="invalid"} 1`, `fogmesh_control_audit_records_total 10`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	code, ar = getAudit(t, s, "/v1/audit/n1?verify=1")
	if code != 200 || len(ar.Chains) != 1 || ar.Chains[0].LastSeq != 10 || !*ar.Chains[0].Intact || ar.Chains[0].Report.Records != 10 {
		t.Fatalf("%d %+v", code, ar)
	}
	if code, _ := getAudit(t, s, "/v1/audit/nosuch"); code != 404 {
		t.Fatalf("unknown node: %d", code)
	}
	if code, _ := getAudit(t, s, "/v1/audit/..%2f..%2fetc"); code != 400 && code != 404 {
		t.Fatalf("path traversal: %d", code)
	}
	a.c.Close()
	s.Close()

	// After a restart the node resumes where the control plane stopped.
	s2 := startServer(t, dir)
	dialAgentWelcome(t, s2, "n1", 10)
	code, ar = getAudit(t, s2, "/v1/audit?verify=1")
	if code != 200 || len(ar.Chains) != 2 || ar.Chains[0].LastSeq != 3 || ar.Chains[1].LastSeq != 10 {
		t.Fatalf("after restart: %+v", ar)
	}
	for _, c := range ar.Chains {
		if !*c.Intact {
			t.Fatalf("chain %s: %+v", c.Node, c.Report)
		}
	}
}

// dialAgentWelcome is dialAgent that checks the welcome's audit fields:
// the feature, and the last seq held of the node's chain.
func dialAgentWelcome(t *testing.T, s *Server, node string, wantSeq uint64) *agentConn {
	t.Helper()
	c, err := net.Dial("tcp", s.SyncAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	a := &agentConn{t: t, c: c, r: wire.NewReader(c)}
	a.send(&wire.Message{Type: wire.TypeHello, Protocol: wire.ProtocolVersion, Capabilities: []string{wire.CapPolicy2}, Node: &api.Node{
		Meta: api.Meta{Name: node}, Spec: api.NodeSpec{Site: "shop-1", Region: "east", MeshAddress: "127.0.0.1:7072"}}})
	m := a.recv()
	if m.Type != wire.TypeWelcome || !slices.Contains(m.Features, wire.FeatureAudit) || m.AuditSeq != wantSeq {
		t.Fatalf("welcome %+v, want feature audit and auditSeq %d", m, wantSeq)
	}
	return a
}

func getBody(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// startSecureIn starts a secure control plane on dir (an existing state
// directory: a restart).
func startSecureIn(t *testing.T, dir string) *Server {
	t.Helper()
	s := serveControl(t, Config{StateDir: dir, AdminAddr: "127.0.0.1:0", SyncAddr: "127.0.0.1:0",
		HeartbeatInterval: 200 * time.Millisecond})
	return s
}

// joinWithKey joins node at site with a token and key, as an agent does,
// and returns its node SVID.
func joinWithKey(t *testing.T, s *Server, node, site string, key *ecdsa.PrivateKey) *x509svid.SVID {
	t.Helper()
	tok, err := s.CreateToken(identity.TokenJoin, site, "", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	csr, _ := identity.NewCSR(key)
	m := dialJoin(t, s, &wire.Message{Token: tok, CSR: csr,
		Node: &api.Node{Meta: api.Meta{Name: node}, Spec: api.NodeSpec{Site: site, Region: "r"}}})
	if m.Type != wire.TypeJoined {
		t.Fatalf("join: %+v", m)
	}
	return joinedSVID(t, m, key)
}

// dialSecureAgent opens node's mutually authenticated sync stream.
func dialSecureAgent(t *testing.T, s *Server, svid *x509svid.SVID, node, site string) *agentConn {
	t.Helper()
	src := identity.NewSource()
	src.SetBundles(s.CA().Bundle())
	src.SetSVID(svid)
	c, err := tls.Dial("tcp", s.SyncAddr(), src.ClientConfig(identity.AuthorizeID(identity.ControlID(s.CA().TrustDomain())), identity.ALPNSync))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	a := &agentConn{t: t, c: c, r: wire.NewReader(c)}
	a.send(&wire.Message{Type: wire.TypeHello, Protocol: wire.ProtocolVersion, Capabilities: []string{wire.CapPolicy2}, Node: &api.Node{
		Meta: api.Meta{Name: node}, Spec: api.NodeSpec{Site: site, Region: "r", MeshAddress: "127.0.0.1:1"}}})
	if m := a.recv(); m.Type != wire.TypeWelcome {
		t.Fatalf("want welcome, got %+v", m)
	}
	return a
}

// signedNodeRecords writes n records of node's chain with a real log
// signing checkpoints with key (one every 4 records) and returns them.
func signedNodeRecords(t *testing.T, node string, n int, key *ecdsa.PrivateKey) []audit.Record {
	t.Helper()
	l, err := audit.Open(audit.Config{Dir: t.TempDir(), Node: node, NoSync: true, Signer: key, CheckpointEvery: 4})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		l.Append(audit.Record{Kind: audit.KindAuthz, Actor: "spiffe://fogmesh.local/ns/a/sa/b", Action: "connect",
			Object: fmt.Sprintf("demo/hello#%d", i), Decision: audit.Deny})
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	recs, err := l.ReadFrom(1, 1000)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// forgedCheckpoint is a checkpoint that chains after prev, rehashed, and
// signed with a key that is not the node's.
func forgedCheckpoint(t *testing.T, prev audit.Record) audit.Record {
	t.Helper()
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	r := audit.Record{Seq: prev.Seq + 1, Time: prev.Time.Add(time.Second), Node: prev.Node, Kind: audit.KindCheckpoint,
		Action: "checkpoint", Object: "key:" + audit.KeyID(&other.PublicKey), Prev: prev.Hash}
	r.Hash, _ = r.ComputeHash()
	digest, _ := hex.DecodeString(r.Hash)
	sig, err := ecdsa.SignASN1(rand.Reader, other, digest)
	if err != nil {
		t.Fatal(err)
	}
	r.Sig = base64.StdEncoding.EncodeToString(sig)
	return r
}

// TestAuditKeysSurviveRestart (issue 13): a node's checkpoint key is
// registered when its certificate is issued; after a restart of the
// control plane on the same state directory, ingest still refuses a
// checkpoint signed by another key, and verify checks the signatures.
func TestAuditKeysSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	s := startSecureIn(t, dir)
	key, _ := identity.NewKey()
	svid := joinWithKey(t, s, "edge-1", "shop-1", key)
	recs := signedNodeRecords(t, "edge-1", 12, key) // 15 records: checkpoints at 5, 10, 15
	if len(recs) != 15 || recs[4].Kind != audit.KindCheckpoint {
		t.Fatalf("%d records", len(recs))
	}
	a := dialSecureAgent(t, s, svid, "edge-1", "shop-1")
	a.send(&wire.Message{Type: wire.TypeAudit, Audit: encodeBatch(t, recs[:5])})
	if m := a.recv(); m.Type != wire.TypeAuditAck || m.AuditSeq != 5 || m.Error != "" {
		t.Fatalf("ack %+v", m)
	}
	a.c.Close()
	s.Close()

	s = startSecureIn(t, dir)
	a = dialSecureAgent(t, s, svid, "edge-1", "shop-1")
	forged := append(slices.Clone(recs[5:9]), forgedCheckpoint(t, recs[8]))
	a.send(&wire.Message{Type: wire.TypeAudit, Audit: encodeBatch(t, forged)})
	if m := a.recv(); m.Type != wire.TypeAuditAck || m.AuditSeq != 5 || !strings.Contains(m.Error, "signature") {
		t.Fatalf("forged checkpoint after a restart: %+v", m)
	}
	a.send(&wire.Message{Type: wire.TypeAudit, Audit: encodeBatch(t, recs[5:])})
	if m := a.recv(); m.AuditSeq != 15 || m.Error != "" {
		t.Fatalf("ack %+v", m)
	}
	c, err := s.nodeChain("edge-1", true)
	if err != nil {
		t.Fatal(err)
	}
	if r := c.Report; r == nil || !r.Intact() || r.Checkpoints != 3 || r.Signed != 3 || r.LastSigned != 15 || len(r.Notes) != 0 {
		t.Fatalf("verify after restart: %+v", c.Report)
	}
	// The control plane's copy on disk, forged the same way while it is
	// stopped, fails verification after the next restart.
	a.c.Close()
	s.Close()
	files, _ := audit.ChainFiles(filepath.Join(dir, "audit", "nodes", "edge-1"), "")
	f, err := os.OpenFile(files[len(files)-1], os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fc := forgedCheckpoint(t, recs[14])
	line, _ := fc.MarshalLine()
	f.Write(line)
	f.Close()
	s = startSecureIn(t, dir)
	c, err = s.nodeChain("edge-1", true)
	if err != nil {
		t.Fatal(err)
	}
	if r := c.Report; r == nil || r.Verdict != audit.VerdictTampered || r.Problems[0].Kind != audit.ProblemSignature || r.Problems[0].Seq != 16 {
		t.Fatalf("forged checkpoint in the files: %+v", c.Report)
	}
}

// cutLines rewrites a file keeping lines [from:to) (to < 0: to the end)
// and appending extra.
func cutLines(t *testing.T, path string, from, to int, extra ...string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(strings.TrimSuffix(string(b), "\n"), "\n")
	lines[len(lines)-1] += "\n"
	if to < 0 {
		to = len(lines)
	}
	out := append(lines[from:to:to], extra...)
	if err := os.WriteFile(path, []byte(strings.Join(out, "")), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestAuditChainsAnchoredToStoredHeads (issue 9): the control plane
// stores the head of every chain it holds; its copies edited while it is
// stopped (tail cut, records appended, start removed) are reported against
// those heads after a restart, not passed as intact.
func TestAuditChainsAnchoredToStoredHeads(t *testing.T) {
	dir := t.TempDir()
	s := startServer(t, dir)
	if code, body := applyDoc(t, s, helloSvc); code != 200 {
		t.Fatal(code, body)
	}
	recs := map[string][]audit.Record{}
	for _, n := range []string{"cut", "appended", "headless", "untouched", "restarted", "deleted"} {
		recs[n] = nodeRecords(t, n, 10)
		a := dialAgentWelcome(t, s, n, 0)
		a.send(&wire.Message{Type: wire.TypeAudit, Audit: encodeBatch(t, recs[n])})
		if m := a.recv(); m.AuditSeq != 10 || m.Error != "" {
			t.Fatalf("%s: ack %+v", n, m)
		}
		if n == "restarted" { // the agent lost its state: a new chain
			fresh := nodeRecords(t, n, 2)
			a.send(&wire.Message{Type: wire.TypeAudit, AuditRestart: true, Audit: encodeBatch(t, fresh)})
			if m := a.recv(); m.AuditSeq != 2 || m.Error != "" {
				t.Fatalf("restart: ack %+v", m)
			}
		}
		a.c.Close()
	}
	code, ar := getAudit(t, s, "/v1/audit?verify=1")
	if code != 200 || len(ar.Chains) != 8 {
		t.Fatalf("%d %+v", code, ar)
	}
	for _, c := range ar.Chains {
		if !*c.Intact || c.Report.Head == nil || c.Report.Head.Seq != c.LastSeq {
			t.Fatalf("before the edits, %s (%s): %+v", c.Node, c.Source, c.Report)
		}
	}
	s.Close()

	nodes := filepath.Join(dir, "audit", "nodes")
	cutLines(t, filepath.Join(nodes, "cut", "audit.log"), 0, 7)
	forged := recs["appended"][9]
	forged.Seq, forged.Prev, forged.Reason = 11, forged.Hash, "forged"
	forged.Hash, _ = forged.ComputeHash()
	fl, _ := forged.MarshalLine()
	cutLines(t, filepath.Join(nodes, "appended", "audit.log"), 0, -1, string(fl))
	cutLines(t, filepath.Join(nodes, "headless", "audit.log"), 3, -1)
	cutLines(t, filepath.Join(dir, "audit", "control", "audit.log"), 0, 1) // the own chain: 2 records, 1 kept
	if err := os.RemoveAll(filepath.Join(nodes, "deleted")); err != nil {  // every record of a chain
		t.Fatal(err)
	}

	s = startServer(t, dir)
	code, ar = getAudit(t, s, "/v1/audit?verify=1")
	if code != 200 || len(ar.Chains) != 8 {
		t.Fatalf("%d %+v", code, ar)
	}
	got := map[string]string{}
	for _, c := range ar.Chains {
		r := c.Report
		v := r.Verdict
		if len(r.Problems) > 0 {
			v += " " + r.Problems[0].Kind + " " + fmt.Sprint(r.Problems[0].Seq)
		}
		if len(r.Unanchored) > 0 {
			v += " " + r.Unanchored[0][:strings.IndexByte(r.Unanchored[0], ':')]
		}
		got[c.Source+" "+c.Node] = v
	}
	want := map[string]string{
		"control control":     "tampered head 2", // the cut, recorded in the chain at start
		"node appended":       "unanchored tail",
		"node cut":            "tampered head 7",
		"node headless":       "tampered removed 4",
		"node restarted":      "intact",
		"node untouched":      "intact",
		"removed deleted":     "tampered head 0", // listed from its stored head, not left out
		"archived restarted.": "intact",
	}
	for k, v := range got {
		if strings.HasPrefix(k, "archived restarted.archived-") {
			k = "archived restarted."
		}
		if want[k] != v {
			t.Errorf("%s: %s, want %q", k, v, want[k])
		}
	}
	if t.Failed() {
		t.Fatalf("%+v", ar)
	}
	// The own chain, cut while the control plane was stopped, says so in
	// itself: the head it stored was past the files' end.
	own, err := s.audit.log.ReadFrom(2, 10)
	if err != nil || len(own) == 0 || own[0].Action != "head mismatch" || !strings.Contains(own[0].Reason, "files end at seq 1, before the stored head") {
		t.Fatalf("own chain after the cut: %+v %v", own, err)
	}
}

// encodeBatch is a batch of records as the sync protocol carries it.
func encodeBatch(t *testing.T, recs []audit.Record) []json.RawMessage {
	t.Helper()
	b, err := audit.EncodeBatch(recs)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestAuditOwnRecordsPastHead: records appended to the control plane's own
// chain while it was stopped (linked and hashed right: no key is needed for
// that) are not reported intact after a restart: the control plane writes
// a "past head" record naming them before its next checkpoint signs them,
// and verify reports the chain unanchored from then on.
func TestAuditOwnRecordsPastHead(t *testing.T) {
	dir := t.TempDir()
	s := startServer(t, dir)
	if code, body := applyDoc(t, s, helloSvc); code != 200 {
		t.Fatal(code, body)
	}
	s.Close()
	own := filepath.Join(dir, "audit", "control", "audit.log")
	b, err := os.ReadFile(own)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	last, err := audit.DecodeLine([]byte(lines[len(lines)-1]))
	if err != nil {
		t.Fatal(err)
	}
	forged := audit.Record{Seq: last.Seq + 1, Time: last.Time, Node: last.Node, Kind: audit.KindAdmin, Action: "apply",
		Actor: "admin", Object: "service/demo/backdoor", Prev: last.Hash}
	forged.Hash, _ = forged.ComputeHash()
	fl, _ := forged.MarshalLine()
	cutLines(t, own, 0, -1, string(fl))

	s = startServer(t, dir)
	code, ar := getAudit(t, s, "/v1/audit?verify=1")
	if code != 200 {
		t.Fatalf("%d %+v", code, ar)
	}
	for _, c := range ar.Chains {
		if c.Source != "control" {
			continue
		}
		if *c.Intact || c.Report.Verdict != audit.VerdictUnanchored || len(c.Report.Unanchored) == 0 ||
			!strings.Contains(strings.Join(c.Report.Unanchored, " "), fmt.Sprintf("seq %d..%d were found past the stored head", forged.Seq, forged.Seq)) {
			t.Fatalf("own chain with an appended record: %+v", c.Report)
		}
		return
	}
	t.Fatalf("no own chain in %+v", ar)
}
