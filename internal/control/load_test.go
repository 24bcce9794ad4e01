package control

import (
	"fmt"
	"maps"
	"testing"
	"time"
)

// The others' load is the fresh agents' sum minus the asking agent's
// share, and answering every agent's heartbeat sums the agents once per
// loadEvery, not once per heartbeat (before: O(N) per heartbeat, O(N²) per
// interval, under the server's lock).
func TestOthersLoadSumsOncePerInterval(t *testing.T) {
	now := time.Unix(1000, 0)
	live := map[string]*liveNode{
		"a":     {lastHeartbeat: now, epLoad: map[string]float64{"demo/e1": 2, "demo/e2": 1}},
		"b":     {lastHeartbeat: now, epLoad: map[string]float64{"demo/e1": 3}},
		"stale": {lastHeartbeat: now.Add(-time.Minute), epLoad: map[string]float64{"demo/e1": 100}},
	}
	for i := range 2000 {
		live[fmt.Sprintf("idle-%d", i)] = &liveNode{lastHeartbeat: now}
	}
	var ls loadSum
	if got := ls.others(live, "a", now, 10*time.Second); !maps.Equal(got, map[string]float64{"demo/e1": 3}) {
		t.Fatalf("others of a = %v, want e1:3", got)
	}
	if got := ls.others(live, "b", now, 10*time.Second); !maps.Equal(got, map[string]float64{"demo/e1": 2, "demo/e2": 1}) {
		t.Fatalf("others of b = %v", got)
	}
	if got := ls.others(live, "idle-1", now, 10*time.Second); !maps.Equal(got, map[string]float64{"demo/e1": 5, "demo/e2": 1}) {
		t.Fatalf("others of an idle agent = %v", got)
	}
	for i := range 2000 {
		ls.others(live, fmt.Sprintf("idle-%d", i), now.Add(time.Duration(i)*time.Microsecond), 10*time.Second)
	}
	if ls.scans != 1 {
		t.Fatalf("2,003 heartbeats within %v summed the agents %d times, want once", loadEvery, ls.scans)
	}
	// A new report counts from the next sum on.
	live["b"].epLoad = map[string]float64{"demo/e1": 7}
	later := now.Add(loadEvery)
	if got := ls.others(live, "a", later, 10*time.Second); !maps.Equal(got, map[string]float64{"demo/e1": 7}) || ls.scans != 2 {
		t.Fatalf("after %v: others of a = %v (sums %d), want e1:7 from a new sum", loadEvery, got, ls.scans)
	}
}
