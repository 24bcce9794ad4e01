package control

import (
	"crypto/ecdsa"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fogmesh/fogmesh/internal/audit"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// forkedNodeRecords returns two chains of node that share their first
// shared records: held (shared+nh records), what the control plane took
// first, and restored (shared+nr), what the node writes after its state
// directory is restored from a backup taken after them.
func forkedNodeRecords(t *testing.T, node string, key *ecdsa.PrivateKey, shared, nh, nr int) (held, restored []audit.Record, fork int) {
	t.Helper()
	base := t.TempDir()
	dirH, dirR := filepath.Join(base, "h"), filepath.Join(base, "r")
	write := func(dir string, n int, tag string) []audit.Record {
		l, err := audit.Open(audit.Config{Dir: dir, Node: node, NoSync: true, Signer: key, CheckpointEvery: 4})
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			l.Append(audit.Record{Kind: audit.KindAuthz, Actor: "spiffe://fogmesh.local/ns/a/sa/b", Action: "connect",
				Object: fmt.Sprintf("demo/hello#%d", i), Decision: audit.Deny, Reason: tag})
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		l, err = audit.Open(audit.Config{Dir: dir, Node: node, NoSync: true, Signer: key, CheckpointEvery: 4})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		recs, err := l.ReadFrom(1, 1000)
		if err != nil {
			t.Fatal(err)
		}
		return recs
	}
	write(dirH, shared, "shared")
	if out, err := exec.Command("cp", "-r", dirH, dirR).CombinedOutput(); err != nil {
		t.Fatal(err, string(out))
	}
	held, restored = write(dirH, nh, "first incarnation"), write(dirR, nr, "after restore")
	// (Checkpoints add records: the fork's seq is found, not computed.)
	fork = 0
	for fork < len(held) && fork < len(restored) && held[fork].Hash == restored[fork].Hash {
		fork++
	}
	if fork < shared || fork >= len(held)-1 || fork >= len(restored)-1 || len(restored) <= len(held) {
		t.Fatalf("forked chains: %d and %d records, forked at index %d", len(held), len(restored), fork)
	}
	return held, restored, fork
}

// TestAuditForkBelowHeadRestartsChain: a node whose state directory was
// restored from a backup writes records that differ from those the control
// plane holds past the backup's seq. A batch of them, whether it resumes
// past the backup (records below the head: they used to be skipped
// unchecked and acked as held, so the node pruned them) or comes from seq
// 1 as a restart (the same first record: it used to be taken as a resend
// and refused at the head, forever), is refused as a fork with seq 0
// acked; the chain held is archived, and the node's chain, shipped from
// seq 1, is taken. Nothing is lost: the archive holds the old chain.
func TestAuditForkBelowHeadRestartsChain(t *testing.T) {
	dir := t.TempDir()
	s := startSecureIn(t, dir)
	for _, tc := range []struct {
		node    string
		restart bool // the forked batch comes as a restart from seq 1
	}{{"edge-1", false}, {"edge-2", true}} {
		key, _ := identity.NewKey()
		svid := joinWithKey(t, s, tc.node, "shop-1", key)
		held, restored, fork := forkedNodeRecords(t, tc.node, key, 10, 20, 25)
		a := dialSecureAgent(t, s, svid, tc.node, "shop-1")
		a.send(&wire.Message{Type: wire.TypeAudit, Audit: encodeBatch(t, held)})
		if m := a.recv(); m.Type != wire.TypeAuditAck || m.AuditSeq != uint64(len(held)) || m.Error != "" {
			t.Fatalf("%s: ack %+v", tc.node, m)
		}
		forked := restored[fork : len(held)-1] // from the fork, all below the head
		if tc.restart {
			forked = restored
		}
		a.send(&wire.Message{Type: wire.TypeAudit, AuditRestart: tc.restart, Audit: encodeBatch(t, forked)})
		if m := a.recv(); m.Type != wire.TypeAuditAck || m.AuditSeq != 0 || !m.AuditRestart || !strings.Contains(m.Error, "fork") {
			t.Fatalf("%s: forked batch: ack %+v; want a fork refused with seq 0 and a restart asked", tc.node, m)
		}
		// The shipper answers AuditRestart by shipping its chain from seq 1 as a
		// restart.
		a.send(&wire.Message{Type: wire.TypeAudit, AuditRestart: true, Audit: encodeBatch(t, restored)})
		if m := a.recv(); m.Type != wire.TypeAuditAck || m.AuditSeq != uint64(len(restored)) || m.Error != "" {
			t.Fatalf("%s: restart: ack %+v", tc.node, m)
		}
		c, err := s.nodeChain(tc.node, true)
		if err != nil {
			t.Fatal(err)
		}
		if c.LastSeq != uint64(len(restored)) || c.Report == nil || !c.Report.Intact() {
			t.Fatalf("%s: chain after the restart: last %d, %+v", tc.node, c.LastSeq, c.Report)
		}
		r, err := s.replica(tc.node)
		if err != nil {
			t.Fatal(err)
		}
		got, err := r.ReadFrom(1, 1000)
		if err != nil || len(got) != len(restored) || got[len(got)-1].Hash != restored[len(restored)-1].Hash {
			t.Fatalf("%s: chain held: %d records, %v", tc.node, len(got), err)
		}
		ents, _ := os.ReadDir(s.auditNodesDir())
		var archives []string
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), tc.node+".archived-") {
				archives = append(archives, e.Name())
			}
		}
		if len(archives) != 1 {
			t.Fatalf("%s: archives %v, want one", tc.node, archives)
		}
		ar, err := audit.OpenReplica(filepath.Join(s.auditNodesDir(), archives[0]), tc.node)
		if err != nil {
			t.Fatal(err)
		}
		old, err := ar.ReadFrom(1, 1000)
		ar.Close()
		if err != nil || len(old) != len(held) || old[len(old)-1].Hash != held[len(held)-1].Hash {
			t.Fatalf("%s: archive holds %d records, %v; want the old chain's %d", tc.node, len(old), err, len(held))
		}
		a.c.Close()
	}
}
