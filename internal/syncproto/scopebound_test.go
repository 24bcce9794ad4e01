package syncproto

import (
	"fmt"
	"strings"
	"testing"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// TestScopeAddBounded: a later subscribe adds at most MaxScopeServices
// entries; one more ends the stream instead of queueing them (64 such
// frames of 32 MiB each would otherwise wait at the control plane).
func TestScopeAddBounded(t *testing.T) {
	for _, n := range []int{MaxScopeServices, MaxScopeServices + 1} {
		c := NewControl(nil, testHeartbeat)
		node := &api.Node{Meta: api.Meta{Name: "n1"}, Spec: api.NodeSpec{Site: "s1", Region: "r1"}}
		steps := []Event{
			Recv{Msg: &wire.Message{Type: wire.TypeHello, Protocol: wire.ProtocolVersion, Node: node, Capabilities: []string{wire.CapPolicy2}}},
			Admitted{Version: 1, StoreID: "s", Features: []string{wire.FeatureScopeAdd}},
			Recv{Msg: &wire.Message{Type: wire.TypeSubscribe, Scope: &wire.Scope{Services: []string{"shop/*"}}}},
		}
		for i, ev := range steps {
			if out := c.Step(ev); out.Err != nil {
				t.Fatalf("step %d: %v", i, out.Err)
			}
		}
		add := make([]string, n)
		for i := range add {
			add[i] = fmt.Sprintf("ns%d/*", i)
		}
		out := c.Step(Recv{Msg: &wire.Message{Type: wire.TypeSubscribe, Scope: &wire.Scope{Services: add}}})
		switch {
		case n <= MaxScopeServices && out.Err != nil:
			t.Fatalf("%d entries refused: %v", n, out.Err)
		case n > MaxScopeServices && (out.Err == nil || !strings.Contains(out.Err.Error(), "scope entries")):
			t.Fatalf("%d entries: %d effects, err %v; want the stream ended", n, len(out.Effects), out.Err)
		}
	}
}
