package flowwin

import "testing"

// TestWindowGrowth: a window doubles from Initial to Max only when its
// reader has consumed a whole window and emptied the buffer; each step
// takes its size from the budget, and Release gives it all back, once.
func TestWindowGrowth(t *testing.T) {
	b := NewBudget(1 << 30)
	var w Window
	if got := w.Consumed(Initial, false, b); got != 0 || w.Size() != Initial {
		t.Fatalf("grew by %d to %d with the buffer not drained", got, w.Size())
	}
	if got := w.Consumed(1, true, b); got != Initial || w.Size() != 2*Initial {
		t.Fatalf("a drained window that was used whole grew by %d to %d, want %d to %d", got, w.Size(), Initial, 2*Initial)
	}
	if got := w.Consumed(Initial, true, b); got != 0 {
		t.Fatalf("grew by %d before a whole window (%d) was consumed again", got, w.Size())
	}
	for w.Size() < Max {
		w.Consumed(int(w.Size()), true, b)
	}
	if got := w.Consumed(Max, true, b); got != 0 || w.Size() != Max {
		t.Fatalf("grew past Max: by %d to %d", got, w.Size())
	}
	if b.Left() != 1<<30-(Max-Initial) {
		t.Fatalf("budget left %d, want %d", b.Left(), 1<<30-(Max-Initial))
	}
	w.Release()
	w.Release()
	if b.Left() != 1<<30 {
		t.Fatalf("budget after Release: %d, want it whole", b.Left())
	}
}

// TestBudgetBoundsGrowth: a window grows only by what the budget has left.
func TestBudgetBoundsGrowth(t *testing.T) {
	b := NewBudget(3 * Initial / 2)
	var w, v Window
	if got := w.Consumed(Initial, true, b); got != Initial {
		t.Fatalf("first growth %d, want %d", got, Initial)
	}
	if got := v.Consumed(Initial, true, b); got != 0 || b.Left() != Initial/2 {
		t.Fatalf("a second window grew by %d past the budget (left %d)", got, b.Left())
	}
	w.Release()
	if got := v.Consumed(1, true, b); got != Initial {
		t.Fatalf("after a release the second window grew by %d, want %d", got, Initial)
	}
}
