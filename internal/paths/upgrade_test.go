package paths

import (
	"sync"
	"sync/atomic"
	"testing"
)

// TestUpgradeUnderLoad: streams opened in a loop while the relayed path
// is upgraded to a punched one all work; once punched, no relayed session
// stays behind (every one is retired and closes with its last stream) and
// the path gauges count the peer as punched.
func TestUpgradeUnderLoad(t *testing.T) {
	l := newLab(t)
	punching := func(c *Config) { c.UDPAddr = "127.0.0.1:0" }
	a := l.node("site-a", "a", punching)
	b := l.node("site-b", "b", punching)
	waitRelay(t, true, a, b)
	pb := b.peer()
	pb.Addr = closedAddr(t)
	openEcho(t, a.m, pb).Close()

	var stop atomic.Bool
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				c, err := a.m.Dial(t.Context(), pb, header("echo"))
				if err != nil {
					errs <- err
					return
				}
				c.Close()
			}
		}()
	}
	waitFor(t, "a punched path", func() bool { p, _ := pathTo(a.m, "b"); return p.Kind == Punched })
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("a stream failed during the upgrade: %v", err)
	}
	waitFor(t, "no relayed session left", func() bool { return gaugeValue(b.srvSet, meshSessionsIn) == 0 })
	if n, p := a.m.count(Relayed), a.m.count(Punched); n != 0 || p != 1 {
		t.Fatalf("paths by kind: %d relayed, %d punched; want 0, 1", n, p)
	}
}
