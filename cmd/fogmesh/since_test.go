package main

import (
	"strings"
	"testing"
	"time"
)

// TestSinceAgo: a path's age prints rounded, and an unknown (zero) time
// prints "-" rather than a 292-year duration.
func TestSinceAgo(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		since time.Time
		want  string
	}{
		{time.Time{}, "-"},
		{now.Add(-90 * time.Second), "1m30s ago"},
		{now.Add(-1400 * time.Millisecond), "1s ago"},
	} {
		if got := sinceAgo(c.since, now); got != c.want {
			t.Errorf("sinceAgo(%v) = %q, want %q", c.since, got, c.want)
		}
	}
	if got := sinceAt(time.Time{}); got != "-" {
		t.Errorf("sinceAt(zero) = %q", got)
	}
	if got := sinceAt(now); !strings.HasPrefix(got, "2026-12-03T12:00:00") {
		t.Errorf("sinceAt = %q", got)
	}
}
