package agent

import (
	"net/netip"

	"github.com/fogmesh/fogmesh/internal/api"
)

var (
	testNode    = api.Node{Meta: api.Meta{Name: "n"}, Spec: api.NodeSpec{Site: "s", Region: "r"}}
	testPrefix4 = netip.MustParsePrefix("127.77.0.0/16")
	testPrefix6 = netip.MustParsePrefix("fd00::/64")
)

// limiterKeys lists the keys of a's circuit-breaker state: request
// limiters, then connection counters.
func limiterKeys(a *Agent) (limiters, counters []string) {
	a.l7.limiters.Range(func(k, _ any) bool { limiters = append(limiters, k.(string)); return true })
	a.svcCounters.Range(func(k, _ any) bool { counters = append(counters, k.(string)); return true })
	return limiters, counters
}
