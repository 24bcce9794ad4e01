package syncproto

import (
	"fmt"
	"math"
	"strings"
	"testing"
)

// Moved from internal/control with ValidLoads.
func TestValidLoadsDropsHostileEntries(t *testing.T) {
	in := map[string]float64{"demo/a": 3, "demo/neg": -1, "demo/inf": math.Inf(1), "demo/nan": math.NaN(),
		"demo/huge": 1e12, strings.Repeat("k", 600): 1, "demo/zero": 0}
	got := ValidLoads(in)
	if len(got) != 1 || got["demo/a"] != 3 {
		t.Fatalf("ValidLoads = %v, want only demo/a=3", got)
	}
	if ValidLoads(nil) != nil {
		t.Fatal("nil in, want nil out")
	}
	many := make(map[string]float64, maxLoadEntries+10)
	for i := range maxLoadEntries + 10 {
		many[fmt.Sprintf("demo/e%d", i)] = 1
	}
	if n := len(ValidLoads(many)); n > maxLoadEntries {
		t.Fatalf("ValidLoads kept %d entries, want at most %d", n, maxLoadEntries)
	}
}
