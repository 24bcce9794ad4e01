package httpproxy

import "testing"

// TestCopyBuffersNoAlloc: the fast path takes a copy buffer for every
// response body; a recycled one must cost no allocation (putting a
// *[]byte cost one per request).
func TestCopyBuffersNoAlloc(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items at random under -race")
	}
	CopyBuffers.Put(CopyBuffers.Get())
	n := testing.AllocsPerRun(200, func() {
		buf := CopyBuffers.Get()
		buf[0] = 1
		CopyBuffers.Put(buf[:10]) // a resliced buffer comes back whole
	})
	if n >= 0.5 {
		t.Errorf("%v allocations per Get and Put", n)
	}
	if buf := CopyBuffers.Get(); len(buf) != copyBufSize {
		t.Errorf("Get returned %d bytes, want %d", len(buf), copyBufSize)
	}
	CopyBuffers.Put(make([]byte, 10)) // too small: dropped, not a panic
}
