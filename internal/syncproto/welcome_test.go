package syncproto

import (
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
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
