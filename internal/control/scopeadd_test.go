package control

import (
	"errors"
	"io"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// A scoped subscriber widens its scope on the open stream (welcome lists
// scopeAdd): the answer carries what enters the scope (services, their
// endpoints and the nodes of those not held yet) and names every entry
// asked for, also one with nothing in it (a service that does not
// exist), so the agent can tell "does not exist" from "not yet". Changes
// to the added services arrive from then on; others still do not. A later
// subscribe asking for more than scope entries ends the stream.
func TestScopeAddOnTheOpenStream(t *testing.T) {
	s := startServer(t, t.TempDir())
	for _, n := range []string{"w1", "w2", "w3"} {
		applyObjs(t, s, &api.Node{APIVersion: api.APIVersion, Kind: api.KindNode, Meta: api.Meta{Name: n}, Spec: api.NodeSpec{Site: "shop-1", Region: "east", MeshAddress: "127.147.0.9:7072"}})
	}
	applyObjs(t, s, svcObj("demo", "a"), svcObj("demo", "b"), svcObj("other", "c"), svcObj("third", "z"),
		epObj("demo", "a1", "a", "w1", 9001), epObj("demo", "a2", "a", "w2", 9004), epObj("demo", "b1", "b", "w2", 9002),
		epObj("other", "c1", "c", "w3", 9003), epObj("third", "z1", "z", "w3", 9005))
	ag := dialAgent(t, s, "me")
	ag.send(&wire.Message{Type: wire.TypeSubscribe, Scope: &wire.Scope{Services: []string{"demo/a"}}})
	if snap := ag.recvUpdate(); !snap.Full || len(snap.ScopeAdded) != 0 {
		t.Fatalf("first update: full %v, scopeAdded %v", snap.Full, snap.ScopeAdded)
	}

	ag.send(&wire.Message{Type: wire.TypeSubscribe, Scope: &wire.Scope{Services: []string{"demo/b", "other/*", "missing/x", "bad"}}})
	m := ag.recvUpdate()
	res, rem := updateRefs(m)
	want := []string{"Endpoint demo/b1", "Endpoint other/c1", "Node w3", "Service demo/b", "Service other/c"}
	if m.Full || !slices.Equal(res, want) || len(rem) != 0 || !slices.Equal(m.ScopeAdded, []string{"demo/b", "other/*", "missing/x"}) {
		t.Fatalf("answer (full %v) has %v, removed %v, scopeAdded %v; want %v and the valid entries", m.Full, res, rem, m.ScopeAdded, want)
	}

	// What was added is followed; what is still out of scope is not.
	applyObjs(t, s, epObj("third", "z1", "z", "w3", 9105))
	rev := applyObjs(t, s, epObj("other", "c1", "c", "w3", 9103))
	m = ag.recvUpdate()
	if res, rem := updateRefs(m); m.Version != rev || !slices.Equal(res, []string{"Endpoint other/c1"}) || len(rem) != 0 {
		t.Fatalf("update %d (want %d) has %v, removed %v; want only other/c1", m.Version, rev, res, rem)
	}
	rev = applyObjs(t, s, svcObj("missing", "x"))
	if m = ag.recvUpdate(); m.Version != rev || !slices.Equal(names(m), []string{"Service missing/x"}) {
		t.Fatalf("a service created in the added scope: update %d has %v", m.Version, names(m))
	}

	// Asking again for what it holds: answered at once, with nothing.
	ag.send(&wire.Message{Type: wire.TypeSubscribe, Scope: &wire.Scope{Services: []string{"demo/b"}}})
	if m = ag.recvUpdate(); len(m.Resources)+len(m.Removed) != 0 || !slices.Equal(m.ScopeAdded, []string{"demo/b"}) {
		t.Fatalf("repeated entry: %v, scopeAdded %v", names(m), m.ScopeAdded)
	}

	// Anything but scope entries in a later subscribe ends the stream.
	ag.send(&wire.Message{Type: wire.TypeSubscribe, KnownVersion: 3, Scope: &wire.Scope{Services: []string{"third/*"}}})
	ag.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for range 100 {
		if _, err := ag.r.Read(); err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					t.Fatal("stream still open after a later subscribe with a version")
				}
			}
			return
		}
	}
	t.Fatal("stream still open after a later subscribe with a version")
}

// An unscoped subscriber holds every service: a later subscribe is
// answered with the entries only.
func TestScopeAddToAnUnscopedStream(t *testing.T) {
	s := startServer(t, t.TempDir())
	applyObjs(t, s, svcObj("demo", "a"))
	ag := dialAgent(t, s, "me")
	ag.send(&wire.Message{Type: wire.TypeSubscribe})
	ag.recvUpdate()
	ag.send(&wire.Message{Type: wire.TypeSubscribe, Scope: &wire.Scope{Services: []string{"demo/a"}}})
	if m := ag.recvUpdate(); len(m.Resources)+len(m.Removed) != 0 || !slices.Equal(m.ScopeAdded, []string{"demo/a"}) {
		t.Fatalf("answer has %v, scopeAdded %v", names(m), m.ScopeAdded)
	}
}
