package h2srv

import (
	"errors"
	"net"
	"testing"

	"golang.org/x/net/http2"
)

// frameBytes is one frame on the wire: its header (length as given,
// which may differ from len(payload)) and payload.
func frameBytes(length int, typ http2.FrameType, flags http2.Flags, id uint32, payload []byte) []byte {
	b := []byte{byte(length >> 16), byte(length >> 8), byte(length), byte(typ), byte(flags),
		byte(id >> 24), byte(id >> 16), byte(id >> 8), byte(id)}
	return append(b, payload...)
}

// FuzzCompleteMatchesFramer: whatever bytes have come, when inbuf.complete
// says a unit is whole, meta.ReadFrame takes it without asking for more
// (inside RawConn.Read it cannot wait: it would fail the connection with
// errIncomplete). The bytes arrive one at a time, each arrival processed
// as the read loop does, until the Framer fails the connection.
func FuzzCompleteMatchesFramer(f *testing.F) {
	block := []byte{0x82, 0x86, 0x84, 0x41, 0x01, 'x'} // GET, http, /, authority x
	f.Add(frameBytes(len(block), http2.FrameHeaders, http2.FlagHeadersEndHeaders|http2.FlagHeadersEndStream, 1, block))
	chain := frameBytes(3, http2.FrameHeaders, 0, 1, block[:3])
	chain = append(chain, frameBytes(2, http2.FrameContinuation, 0, 1, block[3:5])...)
	chain = append(chain, frameBytes(1, http2.FrameContinuation, http2.FlagContinuationEndHeaders, 1, block[5:])...)
	f.Add(chain)
	f.Add(append(frameBytes(3, http2.FrameHeaders, 0, 1, block[:3]), frameBytes(8, http2.FramePing, 0, 0, make([]byte, 8))...))
	f.Add(frameBytes(1<<20, http2.FrameData, 0, 1, nil))
	f.Add(append(frameBytes(3, http2.FrameHeaders, 0, 1, block[:3]), frameBytes(maxReadFrame+1, http2.FrameContinuation, 0, 1, nil)...))
	f.Add(frameBytes(0, http2.FrameContinuation, http2.FlagContinuationEndHeaders, 1, nil))
	f.Add(append(frameBytes(4, http2.FrameData, http2.FlagDataPadded, 1, []byte{9, 'a', 'b', 'c'}), frameBytes(8, http2.FramePing, 0, 0, make([]byte, 8))...))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > inbufSize {
			data = data[:inbufSize]
		}
		c, _ := net.Pipe()
		defer c.Close()
		sc := newConn(&Server{}, c, ConnOptions{})
		in := sc.in
		in.raw = true
		for w := 1; w <= len(data); w++ {
			in.buf[in.w] = data[w-1]
			in.w++
			for in.r < in.w && in.complete() {
				_, err := sc.meta.ReadFrame()
				if errors.Is(err, errIncomplete) {
					t.Fatalf("complete said whole, the Framer asked for more at byte %d of %x", w, data)
				}
				var se http2.StreamError
				if err != nil && !errors.As(err, &se) {
					return // the connection would end here
				}
			}
		}
	})
}
