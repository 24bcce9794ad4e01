package clientip

import (
	"net/netip"
	"testing"
)

func TestKey(t *testing.T) {
	for in, want := range map[string]string{
		"10.1.2.3":                         "10.1.2.3",
		"::ffff:10.1.2.3":                  "10.1.2.3",
		"2001:db8:1:2::1":                  "2001:db8:1:2::",
		"2001:db8:1:2:ffff:eeee:dddd:cccc": "2001:db8:1:2::",
		"fe80::1%eth0":                     "fe80::",
		"::1":                              "::",
	} {
		if got := Key(netip.MustParseAddr(in)); got != netip.MustParseAddr(want) {
			t.Errorf("Key(%s) = %v, want %s", in, got, want)
		}
	}
	if got := Key(netip.Addr{}); got.IsValid() {
		t.Errorf("Key of the zero Addr = %v, want the zero Addr", got)
	}
}
