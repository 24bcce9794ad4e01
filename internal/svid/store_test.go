package svid

import (
	"testing"

	"github.com/fogmesh/fogmesh/internal/workloadapi"
)

func TestWorkloadPath(t *testing.T) {
	for p, ok := range map[string]bool{"/ns/a/sa/b": true, "/ns/a/sa/": false, "/ns//sa/b": false, "/x/a/sa/b": false,
		"/ns/a/sa/b/c": false, "ns/a/sa/b": false, "": false} {
		if _, _, got := workloadPath(p); got != ok {
			t.Errorf("workloadPath(%q) ok = %v, want %v", p, got, ok)
		}
	}
}

// TestAttestMatches: every selector that is set must match the caller; the
// executable is the one the caller had when it connected.
func TestAttestMatches(t *testing.T) {
	uid, gid, other := 1000, 100, 1001
	c := workloadapi.Caller{PID: 1, UID: 1000, GID: 100, Exe: "/usr/bin/orders", Known: true}
	for _, tc := range []struct {
		at   *Attest
		c    workloadapi.Caller
		want bool
	}{
		{&Attest{UID: &uid}, c, true},
		{&Attest{UID: &uid, GID: &gid, Path: "/usr/bin/orders"}, c, true},
		{&Attest{UID: &other}, c, false},
		{&Attest{UID: &uid, Path: "/usr/bin/other"}, c, false},
		{&Attest{Path: "/usr/bin/orders"}, workloadapi.Caller{UID: 1000, Known: true}, false}, // exe unreadable
		{&Attest{}, c, false},                                                                 // no selector: nobody
		{nil, c, false},                                                                       // no attest: nobody
		{&Attest{UID: &uid}, workloadapi.Caller{UID: 1000}, false},                            // credentials unknown
	} {
		if got := tc.at.Matches(tc.c); got != tc.want {
			t.Errorf("%+v matches %+v = %v, want %v", tc.at, tc.c, got, tc.want)
		}
	}
}
