package netlab

import "testing"

func TestOwnerPID(t *testing.T) {
	for _, tc := range []struct {
		prefix, name string
		pid          int
		ok           bool
	}{
		{"fmnl", "fmnl-123-1ab12-a1", 123, true},
		{"fmnl", "fmnl-123-1ab12-nata", 123, true},
		{"fmnl", "fmnlx-123-1ab12-a1", 0, false}, // another prefix
		{"fmnl", "fmnl-abc-1ab12-a1", 0, false},  // not a PID
		{"fmnl", "fmnl-123", 0, false},           // no ID after the PID
		{"fmnl", "fmnl-0-1ab12-a1", 0, false},
		{"nlt9sweep", "nlt9sweep-77-2ffff-pub", 77, true},
		{"fmnl", "other", 0, false},
	} {
		pid, ok := ownerPID(tc.prefix, tc.name)
		if pid != tc.pid || ok != tc.ok {
			t.Errorf("ownerPID(%q, %q) = %d, %v; want %d, %v", tc.prefix, tc.name, pid, ok, tc.pid, tc.ok)
		}
	}
}

func TestCheckLiteral(t *testing.T) {
	for addr, ok := range map[string]bool{
		"198.51.100.10:80": true,
		":0":               true,
		"[::1]:53":         true,
		"example.com:80":   false,
		"localhost:80":     false,
		"198.51.100.10":    false, // no port
	} {
		if err := checkLiteral(addr); (err == nil) != ok {
			t.Errorf("checkLiteral(%q) = %v; want ok=%v", addr, err, ok)
		}
	}
}
