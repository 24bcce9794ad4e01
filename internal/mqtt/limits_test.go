package mqtt

import (
	"runtime"
	"testing"
)

// subscribeBody is the body of an MQTT 3.1.1 SUBSCRIBE with n one-byte
// filters (four bytes each).
func subscribeBody(n int) []byte {
	body := make([]byte, 2, 2+4*n)
	body[1] = 1 // packet identifier 1
	for range n {
		body = append(body, 0, 1, 'a', 0)
	}
	return body
}

// TestSubscribeFilterCap: a SUBSCRIBE may carry MaxSubscribeFilters
// filters; one more is refused (MQTT 5: DISCONNECT 0x97 Quota exceeded)
// before the rest is decoded. A 16 MiB SUBSCRIBE of one-byte filters
// (four million of them) otherwise costs the agent over a gigabyte of
// allocations and seconds of CPU before a single topic is authorized,
// and then four million authorization decisions: one client packet.
func TestSubscribeFilterCap(t *testing.T) {
	h := Header{Type: TypeSubscribe, Flags: 2}
	s := Session{Version: 4}
	a, err := s.Inspect(h, subscribeBody(MaxSubscribeFilters))
	if err != nil || len(a.Topics) != MaxSubscribeFilters {
		t.Fatalf("%d filters: %d topics, %v", MaxSubscribeFilters, len(a.Topics), err)
	}
	if _, err := s.Inspect(h, subscribeBody(MaxSubscribeFilters+1)); err == nil || DisconnectReason(err) != 0x97 {
		t.Fatalf("%d filters: %v (reason %#x), want reason 0x97", MaxSubscribeFilters+1, err, DisconnectReason(err))
	}
	huge := subscribeBody((MaxPacketSize - 2) / 4)
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	_, err = s.Inspect(h, huge)
	runtime.ReadMemStats(&m1)
	if alloc := m1.TotalAlloc - m0.TotalAlloc; err == nil || alloc > 8<<20 {
		t.Fatalf("a %d MiB SUBSCRIBE of one-byte filters: %v, %d MiB allocated; want refused, under 8 MiB", len(huge)>>20, err, alloc>>20)
	}
}
