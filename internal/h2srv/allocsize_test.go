package h2srv

import (
	"testing"
	"unsafe"
)

// TestStreamAllocSize: a stream, with what it keeps in its own allocation
// (the request body, its first chunk pointer, small header values), stays
// within 512 bytes: a larger object takes the allocator's path with a
// malloc header (BENCHMARKS.md, session 25), which costs more than the
// allocations it saves.
func TestStreamAllocSize(t *testing.T) {
	if n := unsafe.Sizeof(stream{}); n > 512 {
		t.Errorf("stream is %d bytes, above 512", n)
	}
}
