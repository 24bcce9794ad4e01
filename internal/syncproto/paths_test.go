package syncproto

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/wire"
)

// TestValidPaths: a heartbeat's path report keeps only sane rows: a known
// kind and carrier, printable names of bounded length (no escape
// sequences into `fogmesh get paths`), a finite RTT; at most
// wire.MaxPathReports.
func TestValidPaths(t *testing.T) {
	ok := wire.PathReport{Peer: "a1", Kind: "relayed", Carrier: "quic", Relay: "198.51.100.11:7074", RTTMillis: 1.5, Since: time.Now()}
	bad := []wire.PathReport{
		{Peer: "a1", Kind: "teleported"},
		{Peer: "a1", Kind: "direct", Carrier: "pigeon"},
		{Peer: "", Kind: "direct"},
		{Peer: "a1\x1b[2J", Kind: "direct"},
		{Peer: "a1", Kind: "direct", Remote: "x\ny"},
		{Peer: "a1", Kind: "direct", Relay: "\u009b31m"},
		{Peer: strings.Repeat("a", 254), Kind: "direct"},
		{Peer: "a1", Kind: "direct", RTTMillis: math.NaN()},
		{Peer: "a1", Kind: "direct", RTTMillis: -1},
		{Peer: "a1", Kind: "direct", RTTMillis: math.Inf(1)},
	}
	got := ValidPaths(append([]wire.PathReport{ok}, bad...))
	if len(got) != 1 || got[0] != ok {
		t.Fatalf("kept %+v, want only %+v", got, ok)
	}
	many := make([]wire.PathReport, wire.MaxPathReports+10)
	for i := range many {
		many[i] = ok
	}
	if n := len(ValidPaths(many)); n != wire.MaxPathReports {
		t.Fatalf("kept %d rows, want at most %d", n, wire.MaxPathReports)
	}
}

// FuzzValidPaths: whatever a node reports, the rows kept are printable
// and of a known kind.
func FuzzValidPaths(f *testing.F) {
	f.Add("a1", "direct", "tcp", "198.51.100.11:7074", "192.168.1.2:7072", 1.0)
	f.Add("b1\x1b", "relayed", "quic", "", "", 0.0)
	f.Fuzz(func(t *testing.T, peer, kind, carrier, relay, remote string, rtt float64) {
		for _, p := range ValidPaths([]wire.PathReport{{Peer: peer, Kind: kind, Carrier: carrier, Relay: relay, Remote: remote, RTTMillis: rtt}}) {
			if !printable(p.Peer) || !printable(p.Relay) || !printable(p.Remote) || p.Peer == "" {
				t.Fatalf("kept %+v", p)
			}
			if p.Kind != "direct" && p.Kind != "punched" && p.Kind != "relayed" {
				t.Fatalf("kept kind %q", p.Kind)
			}
		}
	})
}
