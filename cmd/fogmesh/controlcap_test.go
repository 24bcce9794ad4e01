package main

import (
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/cli"
	"github.com/fogmesh/fogmesh/internal/control"
)

// TestControlConfigMaxEndpointsPerNode: the bound on one node's endpoints
// is the control plane's config key maxEndpointsPerNode.
func TestControlConfigMaxEndpointsPerNode(t *testing.T) {
	var fc controlFile
	if err := cli.DecodeConfig([]byte("maxEndpointsPerNode: 8\n"), &fc); err != nil || fc.MaxEndpointsPerNode != 8 {
		t.Fatalf("maxEndpointsPerNode: 8 decoded as %d, %v", fc.MaxEndpointsPerNode, err)
	}
}

// TestControlConfigSyncHandshakeTimeout: the sync port's handshake bound is
// the config key syncHandshakeTimeout, passed to control.Config, and a
// negative one is refused naming it.
func TestControlConfigSyncHandshakeTimeout(t *testing.T) {
	var fc controlFile
	if err := cli.DecodeConfig([]byte("syncHandshakeTimeout: 45s\n"), &fc); err != nil {
		t.Fatal(err)
	}
	if got := fc.controlConfig(0, 0).SyncHandshakeTimeout; got != 45*time.Second {
		t.Fatalf("syncHandshakeTimeout: 45s gave %s", got)
	}
	fc = controlFile{StateDir: t.TempDir(), SyncHandshakeTimeout: durationValue(-time.Second)}
	if err := control.CheckConfig(fc.controlConfig(0, 0)); err == nil || !strings.Contains(err.Error(), "syncHandshakeTimeout") {
		t.Fatalf("negative: %v, want an error naming syncHandshakeTimeout", err)
	}
}
