package meshdns_test

import (
	"net/netip"
	"testing"

	"github.com/fogmesh/fogmesh/internal/meshdns"
	"github.com/miekg/dns"
)

// FuzzHandle feeds arbitrary bytes through the path a UDP query takes:
// header check, accept function, unpack, handler. The handler has no
// upstreams, so names outside the zone get SERVFAIL without any network.
func FuzzHandle(f *testing.F) {
	r := staticResolver{"demo/db": {Headless: true, Ports: []meshdns.Port{{Name: "pg", Port: 5432}},
		Endpoints: []meshdns.Endpoint{{Addr: netip.MustParseAddr("10.1.0.5"), Hostname: "db-0"}, {Addr: netip.MustParseAddr("fd01::6")}}}}
	r["demo/many"] = manyAddrs(300) // answers larger than any UDP reply may be
	for k, v := range testServices {
		r[k] = v
	}
	h, err := meshdns.NewHandlerForTest(meshdns.Config{Upstreams: []string{}}, r)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, packet []byte) {
		resp, err := h.ServePacketForTest(packet)
		if err != nil {
			t.Fatalf("reply does not pack: %v", err)
		}
		if resp == nil {
			return
		}
		if !resp.Response {
			t.Fatal("reply without QR bit")
		}
		if len(packet) >= 2 && resp.Id != uint16(packet[0])<<8|uint16(packet[1]) {
			t.Fatalf("reply ID %d does not match the query's", resp.Id)
		}
		b, err := resp.Pack()
		if err != nil {
			t.Fatalf("pack reply: %v", err)
		}
		if len(b) > 65535 {
			t.Fatalf("reply of %d bytes", len(b))
		}
		// The handler answers as to a UDP client: never more than the
		// server advertises (1232), nor than a client without EDNS takes.
		if max := udpLimit(packet); len(b) > max {
			t.Fatalf("UDP reply of %d bytes, more than the %d allowed", len(b), max)
		}
		var back dns.Msg
		if err := back.Unpack(b); err != nil {
			t.Fatalf("reply does not unpack: %v", err)
		}
	})
}

// udpLimit is the largest UDP reply the server may send to packet: 1232
// with an OPT record, 512 without one (or for a packet that does not
// unpack).
func udpLimit(packet []byte) int {
	var m dns.Msg
	if m.Unpack(packet) == nil && m.IsEdns0() != nil && m.IsEdns0().UDPSize() > 512 {
		return 1232
	}
	return 512
}
