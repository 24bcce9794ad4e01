package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestControlLifetimeFlags: the control plane refuses lifetimes that would
// not carry a site through its autonomy window, from flags and from the
// config file, naming the rule (docs/offline.md).
func TestControlLifetimeFlags(t *testing.T) {
	base := []string{"control", "-state-dir", t.TempDir(), "-admin-addr", any0, "-sync-addr", any0}
	out, code := run(t, append(base, "-node-ttl", "100h", "-autonomy-window", "72h")...)
	if code == 0 || !strings.Contains(out, "exceeds half the nodeTTL") {
		t.Fatalf("-node-ttl 100h -autonomy-window 72h: exit %d\n%s", code, out)
	}
	cfg := filepath.Join(t.TempDir(), "control.yaml")
	os.WriteFile(cfg, []byte("workloadTTL: 1m\nautonomyWindow: 72h\n"), 0o644)
	out, code = run(t, append(base, "-config", cfg)...)
	if code == 0 || !strings.Contains(out, "too short for autonomyWindow") {
		t.Fatalf("workloadTTL 1m for 72h: exit %d\n%s", code, out)
	}
}
