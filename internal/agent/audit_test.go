package agent

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/audit"
	"github.com/fogmesh/fogmesh/internal/control"
)

// cpChain returns the control plane's verified copy of node's chain.
func cpChain(t *testing.T, cp *control.Server, node string) (control.AuditChain, bool) {
	t.Helper()
	resp, err := http.Get("http://" + cp.AdminAddr() + "/v1/audit/" + node + "?verify=1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return control.AuditChain{}, false
	}
	var ar control.AuditResponse
	if err := json.NewDecoder(resp.Body).Decode(&ar); err != nil || len(ar.Chains) != 1 {
		t.Fatalf("%v %+v", err, ar)
	}
	return ar.Chains[0], true
}

func deny(i int) AuthzDecision {
	return AuthzDecision{Source: "spiffe://fogmesh.local/ns/demo/sa/web", Action: "connect",
		Target: "demo/echo", Policy: "demo/deny-all#" + strings.Repeat("x", i%7)}
}

// TestAuditOfflineBufferedThenShipped: decisions made while the control
// plane is down (and across an agent restart) are kept in the state dir and
// shipped, in order and without gaps, when it returns; the control plane's
// copy verifies.
func TestAuditOfflineBufferedThenShipped(t *testing.T) {
	cpDir := t.TempDir()
	cp := startControl(t, cpDir, "")
	syncAddr := cp.SyncAddr()
	stateDir := t.TempDir()
	opts := agentOpts{name: "aud", site: "s1", region: "r1", vipOctet: 160, control: []string{syncAddr}, stateDir: stateDir}
	a := startAgent(t, opts)
	waitFor(t, "agent connected", func() bool { return a.connected.Load() })
	for i := range 5 {
		if err := a.AuditDecision(deny(i)); err != nil {
			t.Fatal(err)
		}
		// Allowed decisions are not recorded by default (decisions: deny).
		a.AuditDecision(AuthzDecision{Source: "x", Action: "connect", Target: "demo/echo", Allow: true})
	}
	waitFor(t, "5 records shipped", func() bool { c, ok := cpChain(t, cp, "aud"); return ok && c.LastSeq == 5 })

	cp.Close()
	waitFor(t, "agent to notice the control plane is gone", func() bool { return !a.connected.Load() })
	for i := range 300 { // more than one batch
		if err := a.AuditDecision(deny(i)); err != nil {
			t.Fatal(err)
		}
	}
	// The agent restarts while still cut off; its records survive.
	a.Close()
	a2 := startAgent(t, opts)
	if seq, _ := a2.AuditLog().Last(); seq != 305 {
		t.Fatalf("after restart the agent's chain ends at %d, want 305", seq)
	}
	a2.AuditDecision(deny(1))

	cp2 := startControl(t, cpDir, syncAddr)
	var got control.AuditChain
	waitFor(t, "the offline records shipped", func() bool {
		c, ok := cpChain(t, cp2, "aud")
		got = c
		return ok && c.LastSeq == 306
	})
	if got.Intact == nil || !*got.Intact || got.Report.Records != 306 || got.Report.FirstSeq != 1 {
		t.Fatalf("control plane copy %+v", got.Report)
	}
	_, localHash := a2.AuditLog().Last()
	if got.LastHash != localHash {
		t.Fatalf("control plane ends at %s, agent at %s", got.LastHash, localHash)
	}
	waitFor(t, "ack seen by the agent", func() bool { return a2.auditShipped.Load() == 306 })
}

func TestAuditDecisionsKnob(t *testing.T) {
	for _, tt := range []struct {
		decisions string
		want      uint64 // records for one allow and one deny
		err       string
	}{
		{"", 1, ""},
		{"deny", 1, ""},
		{"all", 2, ""},
		{"none", 0, ""},
		{"some", 0, `audit.decisions: "some" is not one of deny, all, none`},
	} {
		cfg := Config{Node: NodeConfig{Name: "k", Site: "s", Region: "r"}, MeshAddr: "127.0.0.1:0",
			DNSAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", StateDir: t.TempDir(), Upstreams: []string{},
			Audit: AuditConfig{Decisions: tt.decisions}, Insecure: true}
		a, err := New(cfg)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("%q: err %v, want %s", tt.decisions, err, tt.err)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		a.AuditDecision(AuthzDecision{Source: "s", Action: "connect", Target: "t", Allow: true})
		a.AuditDecision(AuthzDecision{Source: "s", Action: "connect", Target: "t", Allow: false, Policy: "p"})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		a.AuditLog().Flush(ctx)
		cancel()
		if seq, _ := a.AuditLog().Last(); seq != tt.want {
			t.Errorf("%q: %d records, want %d", tt.decisions, seq, tt.want)
		}
		if tt.want > 0 {
			recs, _ := a.AuditLog().ReadFrom(tt.want, 1)
			if r := recs[0]; r.Kind != audit.KindAuthz || r.Decision != audit.Deny || r.Reason != "p" || r.Node != "k" {
				t.Errorf("%q: %+v", tt.decisions, r)
			}
		}
		a.Close()
	}
}

// TestAuditChainRestartAfterStateReset: an agent whose state dir was wiped
// starts its chain at seq 1 again; the control plane archives the chain it
// held (nothing deleted), keeps the new one, and records the restart in
// its own chain.
func TestAuditChainRestartAfterStateReset(t *testing.T) {
	cpDir := t.TempDir()
	cp := startControl(t, cpDir, "")
	opts := agentOpts{name: "rst", site: "s1", region: "r1", vipOctet: 161, control: []string{cp.SyncAddr()}, stateDir: t.TempDir()}
	a := startAgent(t, opts)
	for i := range 7 {
		a.AuditDecision(deny(i))
	}
	waitFor(t, "7 records shipped", func() bool { c, ok := cpChain(t, cp, "rst"); return ok && c.LastSeq == 7 })
	a.Close()

	opts.stateDir = t.TempDir() // the node lost its state
	a2 := startAgent(t, opts)
	for i := range 3 {
		a2.AuditDecision(deny(100 + i))
	}
	var got control.AuditChain
	waitFor(t, "the new chain shipped", func() bool {
		c, ok := cpChain(t, cp, "rst")
		got = c
		return ok && c.LastSeq == 3
	})
	if got.Intact == nil || !*got.Intact || got.Report.FirstSeq != 1 {
		t.Fatalf("new chain at the control plane: %+v", got.Report)
	}
	if _, h := a2.AuditLog().Last(); got.LastHash != h {
		t.Fatalf("control plane ends at %s, agent at %s", got.LastHash, h)
	}
	archived, _ := filepath.Glob(filepath.Join(cpDir, "audit", "nodes", "rst.archived-*", "audit.log*"))
	if len(archived) == 0 {
		t.Fatal("the old chain was not archived")
	}
	var old strings.Builder
	for _, f := range archived {
		b, _ := os.ReadFile(f)
		old.Write(b)
	}
	if n := strings.Count(old.String(), `"kind":"authz"`); n != 7 {
		t.Fatalf("archive holds %d of the 7 old records", n)
	}
	ctl, _ := filepath.Glob(filepath.Join(cpDir, "audit", "control", "audit.log*"))
	var chain strings.Builder
	for _, f := range ctl {
		b, _ := os.ReadFile(f)
		chain.Write(b)
	}
	if !strings.Contains(chain.String(), "restart chain") {
		t.Fatal("the restart is not in the control plane's own chain")
	}
}
