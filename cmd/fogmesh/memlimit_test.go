package main

import "testing"

func TestParseMemoryLimit(t *testing.T) {
	for in, want := range map[string]int64{"900MiB": 900 << 20, "1GiB": 1 << 30, "512KiB": 512 << 10, "2TiB": 2 << 40, "1000B": 1000, "4096": 4096} {
		if got, err := parseMemoryLimit(in); err != nil || got != want {
			t.Errorf("%q: %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "-1MiB", "900MB", "MiB", "1.5GiB", "99999999999TiB"} {
		if got, err := parseMemoryLimit(in); err == nil {
			t.Errorf("%q: %d, want an error", in, got)
		}
	}
}
