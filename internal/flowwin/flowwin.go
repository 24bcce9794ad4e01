// Package flowwin sizes the receive window of an HTTP/2 stream whose
// bytes the agent buffers until a reader takes them: response bodies from
// endpoints (package h2up) and request bodies from clients (package
// h2srv). A window starts at Initial, which is what a body nobody reads
// holds in the agent, and doubles up to Max each time its reader has
// consumed a whole window and emptied the buffer: a reader that keeps up
// gets the window a fast transfer needs; one that is slow or stopped does
// not. The growth of all windows together is drawn from a Budget, so the
// bytes held are at most Initial per body not yet done plus the budget,
// however the readers behave. HTTP/2 cannot take credit back: a window
// keeps its growth until its body is done (Release).
package flowwin

import "sync/atomic"

const (
	// Initial is a stream's receive window to start with
	// (SETTINGS_INITIAL_WINDOW_SIZE).
	Initial = 64 << 10
	// Max is the largest a stream's window grows: the mesh stream's
	// window (agent Config.MeshStreamWindow), which bounds a remote
	// endpoint's rate anyway in secure mode (the default), and above a
	// local endpoint's bandwidth-delay product (h2up's
	// BenchmarkLargeResponse).
	Max = 1 << 20
	// DefaultBudget lets 32 streams run at Max at once; the others stay
	// at Initial.
	DefaultBudget = 32 << 20
)

// Budget is how far windows may together grow beyond Initial, in bytes.
type Budget struct{ left atomic.Int64 }

// NewBudget returns a budget of n bytes.
func NewBudget(n int64) *Budget {
	b := &Budget{}
	b.left.Store(n)
	return b
}

// Process is the budget of the process's HTTP/2 streams, upstream and
// client side together (the agent's gauge
// fogmesh_agent_h2_window_budget_free_bytes).
var Process = NewBudget(DefaultBudget)

// Left returns the bytes of growth left.
func (b *Budget) Left() int64 { return b.left.Load() }

// Swap sets what is left and returns the old value (tests).
func (b *Budget) Swap(n int64) int64 { return b.left.Swap(n) }

// Take draws n bytes from the budget, if it has them; Give returns them.
// For bytes other than a window's growth held against the same memory
// (h2srv: connection credit lent ahead of a slow reader).
func (b *Budget) Take(n int64) bool { return b.take(n) }

// Give returns n bytes that Take drew.
func (b *Budget) Give(n int64) { b.left.Add(n) }

func (b *Budget) take(n int64) bool {
	for {
		left := b.left.Load()
		if left < n {
			return false
		}
		if b.left.CompareAndSwap(left, left-n) {
			return true
		}
	}
}

// Window is one stream's receive window. Consumed is called under the
// stream's lock (one reader at a time); Release may be called from any
// goroutine.
type Window struct {
	size     int64 // 0: Initial
	consumed int64 // bytes consumed since the window last grew
	grown    atomic.Int64
	b        *Budget
}

// Size returns the window's size.
func (w *Window) Size() int64 {
	if w.size == 0 {
		return Initial
	}
	return w.size
}

// Consumed records n bytes taken by the reader; drained: it emptied the
// buffer. It returns what the window grew by (0: it did not), to be
// credited to the sender with the consumed bytes, drawn from b. Callers
// do not call it once the stream has ended or is gone: nothing would give
// the growth back.
func (w *Window) Consumed(n int, drained bool, b *Budget) int64 {
	w.consumed += int64(n)
	size := w.Size()
	if !drained || w.consumed < size || size >= Max || !b.take(size) {
		return 0
	}
	w.b = b
	w.consumed = 0
	w.size = 2 * size
	w.grown.Add(size)
	return size
}

// Release gives the window's growth back to its budget: the stream's
// buffer is let go (its body read to the end, closed or failed). It may
// be called more than once.
func (w *Window) Release() {
	if g := w.grown.Swap(0); g > 0 {
		w.b.left.Add(g)
	}
}
