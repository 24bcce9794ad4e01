package main

import (
	"testing"

	"github.com/fogmesh/fogmesh/internal/cli"
)

// TestControlConfigMaxEndpointsPerNode: the bound on one node's endpoints
// is the control plane's config key maxEndpointsPerNode.
func TestControlConfigMaxEndpointsPerNode(t *testing.T) {
	var fc controlFile
	if err := cli.DecodeConfig([]byte("maxEndpointsPerNode: 8\n"), &fc); err != nil || fc.MaxEndpointsPerNode != 8 {
		t.Fatalf("maxEndpointsPerNode: 8 decoded as %d, %v", fc.MaxEndpointsPerNode, err)
	}
}
