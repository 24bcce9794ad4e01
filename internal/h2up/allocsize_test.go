package h2up

import (
	"testing"
	"unsafe"
)

// TestStreamAllocSize: a stream, with what it keeps in its own allocation
// (the ready body's read, the response body, its first bytes, small
// header and trailer values), stays within 512 bytes: a larger object
// takes the allocator's path with a malloc header (BENCHMARKS.md,
// session 25), which costs more than the allocations it saves.
func TestStreamAllocSize(t *testing.T) {
	if n := unsafe.Sizeof(stream{}); n > 512 {
		t.Errorf("stream is %d bytes, above 512", n)
	}
}
