package h2meta

import (
	"bytes"
	"fmt"
	"testing"

	"golang.org/x/net/http2"
)

// BenchmarkReadIndexedBlock: a HEADERS frame whose block (h2load's GET,
// every field indexed) was read before, decoded again (forgetKnown before
// each read) and copied from the known block.
func BenchmarkReadIndexedBlock(b *testing.B) {
	get := []string{":method", "GET", ":scheme", "http", ":path", "/", ":authority", "bench.demo", "user-agent", "h2load nghttp2/1.64.0"}
	blocks := indexedBlocks(get, get)
	for _, known := range []bool{false, true} {
		b.Run(fmt.Sprint("known=", known), func(b *testing.B) {
			var rd bytes.Reader
			r := New(http2.NewFramer(nil, &rd), 0)
			rd.Reset(frames(1<<14, true, blocks[0]))
			r.ReadFrame()
			data := frames(1<<14, false, blocks[1])
			for range b.N {
				if !known {
					r.forgetKnown()
				}
				rd.Reset(data)
				if _, err := r.ReadFrame(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
