package control

import (
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// agentSnapshot subscribes a and returns the names in its first update.
func agentSnapshot(t *testing.T, a *agentConn) []string {
	t.Helper()
	a.send(&wire.Message{Type: wire.TypeSubscribe})
	for range 20 {
		if m := a.recv(); m.Type == wire.TypeUpdate {
			return names(m)
		}
	}
	t.Fatal("no update in 20 frames")
	return nil
}

// TestRegionRestartedWhileCutOffResumesWithDelta: a regional plane that
// restarts while the global plane is unreachable serves its agents the
// global objects and other regions' exports it held (they are in its
// store), and when the link
// returns it resumes from the version it held before the restart (the
// side file): a delta, not a snapshot, which brings what changed meanwhile.
func TestRegionRestartedWhileCutOffResumesWithDelta(t *testing.T) {
	g := startPlane(t, nil)
	proxy := startCutProxy(t, g.SyncAddr())
	dir := t.TempDir()
	eastCfg := func(c *Config) {
		inRegion("east", proxy.addr())(c)
		c.StateDir, c.VIPIndexMin, c.VIPIndexMax = dir, 100, 199
	}
	east := startPlane(t, eastCfg)

	west := startPlane(t, func(c *Config) { inRegion("west", g.SyncAddr())(c); c.VIPIndexMin, c.VIPIndexMax = 200, 299 })
	mustApply(t, g, svcDoc("api", "", 80))
	regionAgent(t, g, "g1", "cloud", "api/api-g1")
	mustApply(t, west, svcDoc("shop", `,"export":["east"]`, 90))
	regionAgent(t, west, "w1", "west", "shop/shop-w1")
	waitHeld(t, east, "Endpoint/demo/api-g1", "", nil)
	waitHeld(t, east, "Endpoint/demo/shop-w1", "west", nil)
	testenv.WaitFor(t, 10*time.Second, "east to count its snapshot", func() bool { return east.Upstream().Snapshots == 1 })

	proxy.setCut(true)
	testenv.WaitFor(t, 10*time.Second, "east to see the link down", func() bool { return !east.Upstream().Connected })
	east.Close()
	mustApply(t, g, svcDoc("later", "", 81)) // while east is down and cut off

	east = startPlane(t, eastCfg)
	a := regionAgent(t, east, "e1", "east")
	got := agentSnapshot(t, a)
	for _, want := range []string{"Service demo/api", "Endpoint demo/api-g1", "Node g1", "Service demo/shop", "Endpoint demo/shop-w1", "Node w1"} {
		if !slices.Contains(got, want) {
			t.Fatalf("east's agent, east restarted while cut off, got %v: no %s", got, want)
		}
	}
	if st := east.Upstream(); st.Connected || st.Version == 0 {
		t.Fatalf("restarted east: %+v, want cut off and resuming from the version it held", st)
	}

	proxy.setCut(false)
	waitHeld(t, east, "Service/demo/later", "", nil)
	// The update is counted after it is applied: wait for the count (a CI
	// run read it in between).
	testenv.WaitFor(t, 10*time.Second, "east to count the update that brought it", func() bool {
		st := east.Upstream()
		return st.Snapshots+st.Deltas > 0
	})
	st := east.Upstream()
	if st.Snapshots != 0 || st.Deltas == 0 {
		t.Fatalf("restarted east took %d snapshots and %d deltas from upstream, want a delta only", st.Snapshots, st.Deltas)
	}
	if held(east, "Service/demo/api") == nil || held(east, "Endpoint/demo/api-g1") == nil {
		t.Fatal("the delta dropped what east held")
	}
}

// TestRegionUpstreamCopyStale: a side file older than the store (written
// behind it) or unusable costs resends or a snapshot, never a replica
// left behind: what the global plane deleted while east was down goes.
func TestRegionUpstreamCopyStale(t *testing.T) {
	g := startPlane(t, nil)
	proxy := startCutProxy(t, g.SyncAddr())
	dir := t.TempDir()
	eastCfg := func(c *Config) { inRegion("east", proxy.addr())(c); c.StateDir = dir }
	east := startPlane(t, eastCfg)
	mustApply(t, g, svcDoc("api", "", 80))
	waitHeld(t, east, "Service/demo/api", "", nil)
	testenv.WaitFor(t, 10*time.Second, "east to write its upstream copy", func() bool { return east.up.copyWrites.Load() > 0 })
	east.Close()
	old, err := os.ReadFile(upCopyPath(dir))
	if err != nil {
		t.Fatal(err)
	}

	// A copy older than the store: "gone" came after it was written.
	east = startPlane(t, eastCfg)
	mustApply(t, g, svcDoc("gone", "", 81))
	waitHeld(t, east, "Service/demo/gone", "", nil)
	proxy.setCut(true)
	testenv.WaitFor(t, 10*time.Second, "east to see the link down", func() bool { return !east.Upstream().Connected })
	east.Close()
	if err := os.WriteFile(upCopyPath(dir), old, 0o600); err != nil {
		t.Fatal(err)
	}
	if code, body := doReq(t, "DELETE", "http://"+g.AdminAddr()+"/v1/services/demo/gone", ""); code != 200 {
		t.Fatal(code, body)
	}
	east = startPlane(t, eastCfg)
	proxy.setCut(false)
	waitGone(t, east, "Service/demo/gone")
	if st := east.Upstream(); st.Snapshots != 0 {
		t.Fatalf("%d snapshots with a usable (old) copy, want a delta", st.Snapshots)
	}

	// An unusable copy: logged, and the link takes a snapshot.
	east.Close()
	if err := os.WriteFile(upCopyPath(dir), []byte(`{"storeId":"x","applied":3,"held":{"Bogus/x":1}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	east = startPlane(t, eastCfg)
	testenv.WaitFor(t, 10*time.Second, "east to take a snapshot", func() bool { return east.Upstream().Snapshots == 1 })
	waitHeld(t, east, "Service/demo/api", "", nil)
}

func TestDecodeUpCopy(t *testing.T) {
	for _, bad := range []string{``, `[]`, `{"storeId":"","applied":1}`, `{"storeId":"s","applied":0}`,
		`{"storeId":"s","applied":1,"held":{"Service":1}}`, `{"storeId":"s","applied":1,"held":{"Secret/x":1}}`,
		`{"storeId":"s","applied":1,"held":{"Service/` + strings.Repeat("a", 200) + `":1}}`} {
		if _, err := decodeUpCopy([]byte(bad)); err == nil {
			t.Errorf("decodeUpCopy(%s) took it", bad)
		}
	}
	c, err := decodeUpCopy([]byte(`{"storeId":"s","applied":7,"held":{"Service/demo/api":3,"Node/n1":2}}`))
	if err != nil || c.Applied != 7 || c.Held["Node/n1"] != 2 {
		t.Fatalf("%+v %v", c, err)
	}
}

func FuzzDecodeUpCopy(f *testing.F) {
	f.Add([]byte(`{"storeId":"s","applied":7,"held":{"Service/demo/api":3,"Node/n1":2}}`))
	f.Add([]byte(`{"storeId":"s","applied":1,"held":{"Bogus/x":1}}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := decodeUpCopy(b)
		if err == nil && (c.StoreID == "" || c.Applied == 0 || len(c.Held) > maxUpCopy) {
			t.Fatalf("took %+v", c)
		}
	})
}
