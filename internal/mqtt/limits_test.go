package mqtt

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"testing"
	"testing/iotest"
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

// TestReadPacketPieces: a packet that arrives a byte per read (a CONNECT
// split over many segments) reads as the same packet, and no byte past it
// is taken; one that declares more than the limit (256 MiB here) is
// refused at its length with reason 0x95, before a byte of its body is
// waited for; one whose sender vanishes mid-packet is cut short.
func TestReadPacketPieces(t *testing.T) {
	for name, p := range captured(t) {
		after := []byte{0xc0, 0} // a PINGREQ
		r := io.MultiReader(iotest.OneByteReader(bytes.NewReader(p)), bytes.NewReader(after))
		c, raw, err := ReadConnect(r)
		if err != nil || !bytes.Equal(raw, p[:len(raw)]) {
			t.Fatalf("%s: %+v %v", name, c, err)
		}
		if left, _ := io.ReadAll(r); !bytes.Equal(left, append(p[len(raw):len(p):len(p)], after...)) {
			t.Fatalf("%s: %d bytes left after the CONNECT, want %d", name, len(left), len(p)-len(raw)+len(after))
		}
		want, _, _ := ReadConnect(bytes.NewReader(p))
		if c != want {
			t.Fatalf("%s: read a byte at a time as %+v, whole as %+v", name, c, want)
		}
	}
	// A reader that fails the test if asked for more than the header.
	huge := []byte{0x30, 0xff, 0xff, 0xff, 0x7f}
	_, raw, _, err := ReadPacket(io.MultiReader(bytes.NewReader(huge), readerFunc(func([]byte) (int, error) {
		t.Fatal("read past the length of a packet over the limit")
		return 0, nil
	})), MaxPacketSize)
	if DisconnectReason(err) != 0x95 || !bytes.Equal(raw, huge) {
		t.Fatalf("256 MiB packet: %v (reason %#x), raw % x", err, DisconnectReason(err), raw)
	}
	cut := pkt(0x10, s16("MQTT"), []byte{4, 2, 0, 30}, s16("client"))
	for i := 1; i < len(cut); i++ {
		_, _, err := ReadConnect(bytes.NewReader(cut[:i]))
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("CONNECT cut after %d bytes: %v", i, err)
		}
	}
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// TestPropertiesDoNotAllocate: an MQTT 5 PUBLISH of 16 MiB made of user
// properties (over two million, each two strings) is checked string by
// string without copying them: the agent keeps none of them.
func TestPropertiesDoNotAllocate(t *testing.T) {
	var props []byte
	for len(props)+7 < MaxPacketSize-64 {
		props = append(props, 0x26, 0, 1, 'k', 0, 1, 'v')
	}
	n := len(props)
	length := []byte{byte(n&0x7f | 0x80), byte(n>>7&0x7f | 0x80), byte(n>>14&0x7f | 0x80), byte(n >> 21)}
	body := append(append(append([]byte{0, 1, 't'}, length...), props...), 'x')
	s := Session{Version: 5}
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	a, err := s.Inspect(Header{Type: TypePublish, Remaining: len(body)}, body)
	runtime.ReadMemStats(&m1)
	if alloc := m1.TotalAlloc - m0.TotalAlloc; err != nil || len(a.Topics) != 1 || a.Topics[0] != "t" || alloc > 1<<20 {
		t.Fatalf("%v %q, %d KiB allocated for a %d MiB PUBLISH; want under 1 MiB", err, a.Topics, alloc>>10, len(body)>>20)
	}
}
