package httpproxy

import "sync"

// CopyBuffers recycles the 32 KiB buffers ReverseProxy copies response
// bodies through: without a pool it allocates one per request, which was
// 79% of the bytes the L7 path allocated (BenchmarkL7HTTP1 memory profile).
var CopyBuffers = &bufferPool{}

// copyBufSize is the size of CopyBuffers' buffers.
const copyBufSize = 32 << 10

// bufferPool holds *[copyBufSize]byte: a slice converts back to that
// pointer without allocating, where putting a *[]byte would allocate the
// slice header on every Put (once per request on the fast path).
type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte {
	if v, ok := b.p.Get().(*[copyBufSize]byte); ok {
		return v[:]
	}
	return make([]byte, copyBufSize)
}

// Put takes back a buffer of Get's (one of another capacity is dropped).
func (b *bufferPool) Put(buf []byte) {
	if cap(buf) < copyBufSize {
		return
	}
	b.p.Put((*[copyBufSize]byte)(buf[:copyBufSize]))
}
