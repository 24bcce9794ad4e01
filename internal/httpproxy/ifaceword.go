package httpproxy

import (
	"context"
	"io"
	"net/http"
	"unsafe"
)

// Interface comparisons on the per-request path without the runtime's
// ifaceeq: `body == http.NoBody` compares the type words and then calls
// the type's equality function (http.NoBody's type is a struct, not a
// pointer), and `ctx != other` calls ifaceeq to find its type pointer-
// shaped; each reads the type's descriptor, ~20 ns a request at two of
// the fast path's sites in perf (BENCHMARKS.md, session 33).

// iface is the layout of a non-empty interface value: its itab and data words.
type iface struct {
	tab, data unsafe.Pointer
}

func tabOf(b io.ReadCloser) unsafe.Pointer { return (*iface)(unsafe.Pointer(&b)).tab }

// noBodyTab is the itab of http.NoBody as an io.ReadCloser.
var noBodyTab = tabOf(http.NoBody)

// BodyNone reports whether b is nil or http.NoBody (b == nil || b ==
// http.NoBody): by b's type word alone, since every value of NoBody's
// type (an empty struct) is NoBody.
func BodyNone(b io.ReadCloser) bool {
	t := tabOf(b)
	return t == nil || t == noBodyTab
}

// SameContext reports whether a and b are the same context value as ==
// does for contexts of pointer type (every context package's, and
// WithStreamCancel's): the same type and pointer. For a context of
// another type it may report false where == reports true (two equal
// values at different addresses), never the reverse: callers use it to
// skip work for the same context, not to tell contexts apart.
func SameContext(a, b context.Context) bool {
	x, y := (*iface)(unsafe.Pointer(&a)), (*iface)(unsafe.Pointer(&b))
	return x.tab == y.tab && x.data == y.data
}
