package control

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/audit"
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
	a.send(&wire.Message{Type: wire.TypeAudit, Audit: nrecs[:5]})
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
		a.send(&wire.Message{Type: wire.TypeAudit, Audit: c.batch})
		m := a.recv()
		if m.Type != wire.TypeAuditAck || m.AuditSeq != 5 || !strings.HasPrefix(m.Error, c.want) {
			t.Fatalf("want refusal %q, got %+v", c.want, m)
		}
	}
	a.send(&wire.Message{Type: wire.TypeAudit, Audit: nrecs[5:]})
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
	a.send(&wire.Message{Type: wire.TypeHello, Protocol: wire.ProtocolVersion, Node: &api.Node{
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
