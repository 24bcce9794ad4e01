package syncproto

import (
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// TestWelcomeTimeout: the wait for welcome is 10 s unless set, and a set
// one holds across streams.
func TestWelcomeTimeout(t *testing.T) {
	a := NewAgent()
	node := &api.Node{Meta: api.Meta{Name: "n"}}
	a.Connect(node, nil, Known{})
	if got := a.ReadTimeout(); got != welcomeTimeout {
		t.Fatalf("default wait for welcome %s, want %s", got, welcomeTimeout)
	}
	a.SetWelcomeTimeout(40 * time.Second)
	for range 2 {
		a.Connect(node, nil, Known{})
		if got := a.ReadTimeout(); got != 40*time.Second {
			t.Fatalf("wait for welcome %s, want the set 40s", got)
		}
	}
}

// TestWelcomeWaitGrows: each stream given up for no welcome within the
// wait (WelcomeTimedOut) makes the next wait twice as long, up to 4
// times the set one, and a welcome brings it back: over a link where the
// welcome always takes longer than the bound, the agent no longer gives
// up every stream at it and reconnects forever.
func TestWelcomeWaitGrows(t *testing.T) {
	a := NewAgent()
	a.SetWelcomeTimeout(3 * time.Second)
	node := &api.Node{Meta: api.Meta{Name: "n"}}
	for i, want := range []time.Duration{3 * time.Second, 6 * time.Second, 12 * time.Second, 12 * time.Second} {
		a.Connect(node, nil, Known{})
		if got := a.ReadTimeout(); got != want {
			t.Fatalf("stream %d: wait for welcome %s, want %s", i+1, got, want)
		}
		if next := a.WelcomeTimedOut(); next != min(2*want, 12*time.Second) {
			t.Fatalf("stream %d given up: next wait %s, want %s", i+1, next, min(2*want, 12*time.Second))
		}
	}
	a.Connect(node, nil, Known{})
	if out := a.Step(Recv{Msg: &wire.Message{Type: wire.TypeWelcome}}); out.Err != nil {
		t.Fatal(out.Err)
	}
	a.Connect(node, nil, Known{})
	if got := a.ReadTimeout(); got != 3*time.Second {
		t.Fatalf("after a welcome: wait for welcome %s, want the set 3s", got)
	}
}
