package agent

import (
	"context"
	"log/slog"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/audit"
	"github.com/fogmesh/fogmesh/internal/transport"
)

// TestMeshCutAuditedByKind: a mesh session cut is audited with a kind
// that says what it is about. A peer whose certificate was revoked or
// expired is a certificate matter (kind cert); a peer cut for holding
// streams past its buffer budget is not (kind limit): auditing it as
// cert sent whoever reviews certificates after a cut no certificate
// explains.
func TestMeshCutAuditedByKind(t *testing.T) {
	l, err := audit.Open(audit.Config{Dir: t.TempDir(), Node: "b", NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	a := &Agent{audit: l, log: slog.New(slog.DiscardHandler)}
	peer := spiffeid.RequireFromString("spiffe://fogmesh.test/site/s1/node/a")
	cases := []struct {
		reason string
		err    error
		kind   string
	}{
		{transport.CutBuffer, transport.ErrPeerBuffer, audit.KindLimit},
		{transport.CutRevoked, transport.ErrPeerRevoked, audit.KindCert},
		{transport.CutExpired, transport.ErrPeerExpired, audit.KindCert},
	}
	for _, c := range cases {
		a.meshCut(transport.Cut{Dir: "in", Peer: peer, Reason: c.reason, Err: c.err})
	}
	if err := l.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	recs, err := l.ReadFrom(1, 100)
	if err != nil {
		t.Fatal(err)
	}
	var cuts []audit.Record
	for _, r := range recs {
		if r.Action == "cut mesh session" {
			cuts = append(cuts, r)
		}
	}
	if len(cuts) != len(cases) {
		t.Fatalf("%d cuts audited, want %d: %+v", len(cuts), len(cases), recs)
	}
	for i, c := range cases {
		if r := cuts[i]; r.Kind != c.kind || r.Actor != peer.String() || r.Object != "dir=in" || r.Reason != c.reason+": "+c.err.Error() {
			t.Errorf("cut for %s audited as %+v, want kind %q", c.reason, r, c.kind)
		}
	}
}
