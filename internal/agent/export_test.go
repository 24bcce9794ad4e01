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
