package agent

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

// remapShare maps keys over names, then over names without drop, and
// returns the share of keys whose backend changed and how many of those
// were not on the dropped backend.
func remapShare(lookup func(names []string, key string) string, names []string, drop int, keys int) (share float64, needless int) {
	rest := append(append([]string(nil), names[:drop]...), names[drop+1:]...)
	moved := 0
	for k := range keys {
		key := fmt.Sprintf("client-%d", k)
		before, after := lookup(names, key), lookup(rest, key)
		if before != after {
			moved++
			if before != names[drop] {
				needless++
			}
		}
	}
	return float64(moved) / float64(keys), needless
}

// TestMaglevStability: each of N endpoints owns ⌊M/N⌋ or ⌈M/N⌉ slots, and
// removing one of N remaps about 1/N of 20000 keys, for Maglev as for the
// rendezvous hashing of consistent-hash.
func TestMaglevStability(t *testing.T) {
	const n, keys = 10, 20000
	var names []string
	for i := range n {
		names = append(names, fmt.Sprintf("ns/ep-%d", i))
	}
	counts := make([]int, n)
	for _, b := range buildMaglev(names) {
		counts[b]++
	}
	for i, c := range counts {
		if c < maglevSize/n || c > maglevSize/n+1 {
			t.Fatalf("backend %d owns %d slots, want %d or %d", i, c, maglevSize/n, maglevSize/n+1)
		}
	}
	tables := map[string][]int32{}
	maglev := func(names []string, key string) string {
		id := strings.Join(names, ",")
		if tables[id] == nil {
			tables[id] = buildMaglev(names)
		}
		return names[tables[id][hash64(0, key)%maglevSize]]
	}
	rendezvous := func(names []string, key string) string {
		var cands []*endpointView
		for _, nm := range names {
			cands = append(cands, &endpointView{key: nm})
		}
		pinOrder(cands, key)
		return cands[0].key
	}
	for _, c := range []struct {
		name   string
		lookup func([]string, string) string
		slack  int // keys of surviving backends that may move
	}{
		{"maglev", maglev, keys / 100}, // Maglev trades a little disruption for balance
		{"rendezvous", rendezvous, 0},
	} {
		for _, drop := range []int{0, 7} {
			share, needless := remapShare(c.lookup, names, drop, keys)
			t.Logf("%s: removing 1 of %d endpoints remapped %.2f%% of %d keys (%d of other endpoints)", c.name, n, 100*share, keys, needless)
			if share < 0.08 || share > 0.13 || needless > c.slack {
				t.Errorf("%s, drop %d: remapped %.3f of keys (%d needlessly), want about %.3f", c.name, drop, share, needless, 1.0/n)
			}
		}
	}
}

// TestMaglevBalancerByHeader: balancer maglev keeps every x-user on one
// endpoint and spreads 30 users over all three.
func TestMaglevBalancerByHeader(t *testing.T) {
	p1, _ := startHTTP(t, "m1")
	p2, _ := startHTTP(t, "m2")
	p3, _ := startHTTP(t, "m3")
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: mg, namespace: demo}
spec:
  ports: [{name: web, port: 19123, protocol: http}]
  balancer: maglev
  hashKey: {header: x-user}
`)
	a := startAgent(t, agentOpts{name: "mgn", site: "s1", region: "r1", vipOctet: 200, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{webWorkload("mg", "mg-1", p1), webWorkload("mg", "mg-2", p2), webWorkload("mg", "mg-3", p3)}})
	waitFor(t, "endpoints", func() bool { return len(endpointsOf(a, "demo/mg")) == 3 })
	url := "http://127.200.0.1:19123/"
	c := &http.Client{}
	waitFor(t, "listener", func() bool { _, err := c.Get(url); return err == nil })
	used := map[string]bool{}
	for k := 0; k < 30; k++ {
		first := ""
		for i := 0; i < 4; i++ {
			req, _ := http.NewRequest("GET", url, nil)
			req.Header.Set("X-User", fmt.Sprintf("user-%d", k))
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			got := strings.Fields(string(b))[0]
			if first == "" {
				first = got
			} else if got != first {
				t.Fatalf("user-%d went to %s then %s", k, first, got)
			}
		}
		used[first] = true
	}
	if len(used) < 3 {
		t.Fatalf("30 keys used only %v", used)
	}
}
