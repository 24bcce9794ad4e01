package httpproxy

import "unsafe"

// headArena cuts the strings of a connection's lean heads (leanHead) from
// chunks of headChunk bytes, each head appended after the last: one
// allocation for several heads instead of one each (the two head strings
// were the fast path's only allocations per request, ~0.14 µs with
// their share of the collector's work). A byte once handed out as part
// of a string is never written again (a head only goes into a chunk's
// unused tail, and a full chunk is left to the collector), so the strings
// stay immutable however long their holders keep them (an access-log
// line, a kept header value); a string kept pins its whole chunk, as it
// pinned its whole head before. A head of more than headArenaMax bytes
// gets a string of its own. One goroutine at a time: the HeaderBuf's.
type headArena struct {
	b []byte
}

const (
	headChunk    = 1024
	headArenaMax = headChunk / 4
)

// str returns b as a string, cut from a's chunk (a nil a: string(b)).
func (a *headArena) str(b []byte) string {
	if a == nil || len(b) == 0 || len(b) > headArenaMax {
		return string(b)
	}
	if cap(a.b)-len(a.b) < len(b) {
		a.b = make([]byte, 0, headChunk)
	}
	n := len(a.b)
	a.b = append(a.b, b...)
	return unsafe.String(&a.b[n], len(b))
}
