package balance

import (
	"fmt"
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
// removing one of N remaps about 1/N of 20000 keys, for Maglev as for
// rendezvous hashing.
func TestMaglevStability(t *testing.T) {
	const n, keys = 10, 20000
	var names []string
	for i := range n {
		names = append(names, fmt.Sprintf("ns/ep-%d", i))
	}
	counts := make([]int, n)
	for _, b := range BuildMaglev(names) {
		counts[b]++
	}
	for i, c := range counts {
		if c < MaglevSize/n || c > MaglevSize/n+1 {
			t.Fatalf("backend %d owns %d slots, want %d or %d", i, c, MaglevSize/n, MaglevSize/n+1)
		}
	}
	var cache MaglevCache
	lookup := func(pin func([]Endpoint, string)) func([]string, string) string {
		return func(names []string, key string) string {
			var in []Endpoint
			for _, nm := range names {
				in = append(in, &ep{key: nm})
			}
			pin(in, key)
			return in[0].Key()
		}
	}
	for _, c := range []struct {
		name   string
		lookup func([]string, string) string
		slack  int // keys of surviving backends that may move
	}{
		{"maglev", lookup(func(e []Endpoint, k string) { Maglev(&cache, e, k) }), keys / 100}, // Maglev trades a little disruption for balance
		{"rendezvous", lookup(Rendezvous), 0},
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

// TestHashKeepsTiers: pinning reorders within each run of equal tier, so
// the nearest tier stays first and a tier Pick put last stays last; a key
// always maps to the same endpoint.
func TestHashKeepsTiers(t *testing.T) {
	var cache MaglevCache
	for name, pin := range map[string]func([]Endpoint, string){
		"rendezvous": Rendezvous,
		"maglev":     func(e []Endpoint, k string) { Maglev(&cache, e, k) },
	} {
		firsts := map[string]bool{}
		for k := range 40 {
			key := fmt.Sprintf("user-%d", k)
			var want string
			for range 3 {
				in := eps("abcdef", "000110") // f: a tier-0 endpoint Pick moved last
				pin(in, key)
				o := keys(in)
				if !strings.ContainsRune("abc", rune(o[0])) || !strings.Contains("de ed", o[3:5]) || o[5] != 'f' {
					t.Fatalf("%s: order %q mixes tiers", name, o)
				}
				if want != "" && o != want {
					t.Fatalf("%s: key %s went %q then %q", name, key, want, o)
				}
				want = o
			}
			firsts[want[:1]] = true
		}
		if len(firsts) != 3 {
			t.Errorf("%s: 40 keys used only %v of a, b, c", name, firsts)
		}
	}
}
