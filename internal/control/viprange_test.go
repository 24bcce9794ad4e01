package control

import (
	"strings"
	"testing"
)

// TestVIPRangeIPv6Refused: an IPv6 vipRange (from the config file or
// -vip-range) is refused with an error naming it. Before, validation
// panicked (a negative shift sizing the VIP index block: indexes are 32
// bits) and the control plane crashed at start (FuzzControlConfig).
func TestVIPRangeIPv6Refused(t *testing.T) {
	for _, r := range []string{"fd00::/64", "fd00::/120", "::ffff:127.77.0.0/112"} {
		err := CheckConfig(Config{StateDir: t.TempDir(), Insecure: true, VIPRange: r})
		if err == nil || !strings.Contains(err.Error(), "not an IPv4 prefix") {
			t.Errorf("vipRange %s: %v, want refused as not IPv4", r, err)
		}
	}
	if err := CheckConfig(Config{StateDir: t.TempDir(), Insecure: true, VIPRange: "10.64.0.0/10", VIPIndexMin: 1, VIPIndexMax: 4194302}); err != nil {
		t.Errorf("an IPv4 range: %v", err)
	}
}
