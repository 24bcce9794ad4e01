package main

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
)

// FuzzControlFlagValues: the values of fogmesh control's -memory-limit
// and -vip-indexes (flags or config file) are taken only as what they
// say: a positive size that does not overflow, FIRST <= LAST from 1, each
// reading back the same when written plainly.
func FuzzControlFlagValues(f *testing.F) {
	for _, s := range []string{"900MiB", "1GiB", "4096", "0", "-1MiB", "99999999999TiB", "+5B", "4611686018427387904B", "4194304TiB",
		"1-100", "0-5", "5-1", "7-7", "1-4294967295", "1-4294967296", "-", "1-2-3", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if n, err := parseMemoryLimit(s); err == nil {
			if n <= 0 || n > 1<<62 {
				t.Fatalf("-memory-limit %q = %d", s, n)
			}
			num, mult := strings.TrimRight(s, "BKMGTi"), int64(1)
			switch strings.TrimPrefix(s, num) {
			case "KiB":
				mult = 1 << 10
			case "MiB":
				mult = 1 << 20
			case "GiB":
				mult = 1 << 30
			case "TiB":
				mult = 1 << 40
			}
			if v, err := strconv.ParseInt(num, 10, 64); err != nil || n/mult != v || n%mult != 0 {
				t.Fatalf("-memory-limit %q = %d, not %s × %d", s, n, num, mult)
			}
			if back, err := parseMemoryLimit(fmt.Sprintf("%dB", n)); err != nil || back != n {
				t.Fatalf("-memory-limit %q = %d, but %dB = %d, %v", s, n, n, back, err)
			}
		}
		if first, last, err := parseVIPIndexes(s); err == nil && s != "" {
			if first == 0 || first > last {
				t.Fatalf("-vip-indexes %q = %d-%d", s, first, last)
			}
			if a, b, err := parseVIPIndexes(fmt.Sprintf("%d-%d", first, last)); err != nil || a != first || b != last {
				t.Fatalf("-vip-indexes %q = %d-%d does not read back: %d-%d %v", s, first, last, a, b, err)
			}
		}
	})
}
