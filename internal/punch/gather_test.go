package punch

import (
	"net/netip"
	"slices"
	"testing"
)

// TestCandidatesStrings: local candidates first, then the reflexive one,
// which is left out when it is a local one already (no NAT between the
// node and the relay): the peer would probe that address twice.
func TestCandidatesStrings(t *testing.T) {
	l1, l2 := netip.MustParseAddrPort("192.168.1.5:4000"), netip.MustParseAddrPort("10.0.0.5:4000")
	for _, c := range []struct {
		in   Candidates
		want []string
	}{
		{Candidates{Local: []netip.AddrPort{l1, l2}, Reflexive: netip.MustParseAddrPort("198.51.100.21:5000")},
			[]string{"192.168.1.5:4000", "10.0.0.5:4000", "198.51.100.21:5000"}},
		{Candidates{Local: []netip.AddrPort{l1, l2}, Reflexive: l2}, []string{"192.168.1.5:4000", "10.0.0.5:4000"}},
		{Candidates{Local: []netip.AddrPort{l1}}, []string{"192.168.1.5:4000"}},
	} {
		if got := c.in.Strings(); !slices.Equal(got, c.want) {
			t.Errorf("%+v: %q, want %q", c.in, got, c.want)
		}
	}
}
