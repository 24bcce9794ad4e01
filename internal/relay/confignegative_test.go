package relay

import (
	"strings"
	"testing"
	"time"
)

// TestConfigNegativeNamesField: a negative limit or duration of a Config
// is an error naming the field, as the control plane's config names its
// own. Before, every one was "negative limit or duration".
func TestConfigNegativeNamesField(t *testing.T) {
	src := source(t, newCA(t), "relay", "r1")
	for name, mod := range map[string]func(*Config){
		"maxSessionsPerNode":    func(c *Config) { c.MaxSessionsPerNode = -1 },
		"maxSessionsPerPair":    func(c *Config) { c.MaxSessionsPerPair = -1 },
		"burst":                 func(c *Config) { c.Burst = -1 },
		"maxUDPChannelsPerNode": func(c *Config) { c.MaxUDPChannelsPerNode = -1 },
		"idleTimeout":           func(c *Config) { c.IdleTimeout = -time.Second },
		"udpIdleTimeout":        func(c *Config) { c.UDPIdleTimeout = -time.Nanosecond },
		"acceptTimeout":         func(c *Config) { c.AcceptTimeout = -time.Second },
		"handshakeTimeout":      func(c *Config) { c.HandshakeTimeout = -time.Second },
		"writeTimeout":          func(c *Config) { c.WriteTimeout = -time.Second },
		"controlTimeout":        func(c *Config) { c.ControlTimeout = -time.Second },
		"replayWindow":          func(c *Config) { c.ReplayWindow = -time.Minute },
	} {
		c := Config{Source: src}
		mod(&c)
		if err := c.validate(); err == nil || !strings.Contains(err.Error(), name+" ") || !strings.Contains(err.Error(), "negative") {
			t.Errorf("%s negative: %v, want an error naming it", name, err)
		}
	}
	c := Config{Source: src, BytesPerSecond: -1, MaxHandshakes: -1, MaxHandshakesPerSource: -1}
	if err := c.validate(); err != nil {
		t.Errorf("negative bounds that mean none: %v", err)
	}
}
