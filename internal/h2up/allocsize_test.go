package h2up

import (
	"strings"
	"testing"
	"unsafe"

	"github.com/fogmesh/fogmesh/internal/httpproxy"
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

var lowerSink string

// TestIdentityHeaderLowered: the agent adds its identity header to every
// request it forwards; its HTTP/2 name is not made anew for each one.
func TestIdentityHeaderLowered(t *testing.T) {
	if n := testing.AllocsPerRun(10, func() { lowerSink = lowerHeader(httpproxy.IdentityHeader) }); n != 0 {
		t.Errorf("lowerHeader(%q): %.0f allocations, want none (commonLower)", httpproxy.IdentityHeader, n)
	}
	if lowerSink != strings.ToLower(httpproxy.IdentityHeader) {
		t.Errorf("lowerHeader(%q) = %q", httpproxy.IdentityHeader, lowerSink)
	}
}
