package control

import (
	"strings"
	"testing"
	"time"
)

// TestNegativeDurationsRefused: a negative duration in the control plane's
// config (file or flag) is an error naming its field; before, the
// heartbeat, timeouts, grace and region CA lifetime fell back to their
// defaults without a word.
func TestNegativeDurationsRefused(t *testing.T) {
	for name, set := range map[string]func(*Config){
		"heartbeatInterval": func(c *Config) { c.HeartbeatInterval = -time.Second },
		"nodeTimeout":       func(c *Config) { c.NodeTimeout = -time.Second },
		"nodeExpiry":        func(c *Config) { c.NodeExpiry = -time.Minute },
		"reconnectGrace":    func(c *Config) { c.ReconnectGrace = -time.Second },
		"nodeTTL":           func(c *Config) { c.NodeTTL = -time.Hour },
		"workloadTTL":       func(c *Config) { c.WorkloadTTL = -time.Hour },
		"autonomyWindow":    func(c *Config) { c.AutonomyWindow = -time.Hour },
		"rotationOverlap":   func(c *Config) { c.RotationOverlap = -time.Hour },
		"regionCATTL":       func(c *Config) { c.RegionCATTL = -time.Hour },
	} {
		for _, insecure := range []bool{false, true} {
			c := Config{StateDir: t.TempDir(), Insecure: insecure}
			set(&c)
			err := CheckConfig(c)
			if err == nil || !strings.Contains(err.Error(), name+" -") || !strings.Contains(err.Error(), "negative") {
				t.Errorf("%s negative (insecure %v): %v, want an error naming it", name, insecure, err)
			}
		}
	}
	// 0 stays the default.
	if err := CheckConfig(Config{StateDir: t.TempDir()}); err != nil {
		t.Errorf("all durations 0 (defaults): %v", err)
	}
}
