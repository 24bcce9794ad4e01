package gossip

import (
	"sync"
	"testing"
	"time"
)

// TestDeathIsSeenWithinASecond: three members on loopback; one shuts down
// without leaving (as a crash would); the others learn of it quickly.
func TestDeathIsSeenWithinASecond(t *testing.T) {
	var mu sync.Mutex
	dead := map[string]time.Time{}
	mk := func(name string) *Gossip {
		g, err := New(Config{Name: name, BindAddr: "127.0.0.1:0", OnChange: func(n string, alive bool) {
			if !alive {
				mu.Lock()
				if _, ok := dead[name+"<-"+n]; !ok {
					dead[name+"<-"+n] = time.Now()
				}
				mu.Unlock()
			}
		}})
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	a, b, c := mk("a"), mk("b"), mk("c")
	defer a.Close()
	defer b.Close()
	if _, err := b.Join([]string{a.Addr()}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Join([]string{a.Addr()}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(a.Members()) != 3 || len(b.Members()) != 3 {
		if time.Now().After(deadline) {
			t.Fatalf("members: a %v, b %v", a.Members(), b.Members())
		}
		time.Sleep(20 * time.Millisecond)
	}
	killed := time.Now()
	c.ml.Shutdown() // no Leave: a crash
	for {
		mu.Lock()
		ta, oka := dead["a<-c"]
		tb, okb := dead["b<-c"]
		mu.Unlock()
		if oka && okb {
			t.Logf("death of c seen by a after %v, by b after %v", ta.Sub(killed), tb.Sub(killed))
			if ta.Sub(killed) > 2*time.Second || tb.Sub(killed) > 2*time.Second {
				t.Fatal("too slow")
			}
			return
		}
		if time.Since(killed) > 5*time.Second {
			t.Fatal("death of c never seen")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
