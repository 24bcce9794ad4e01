package h2up

import "time"

// SetControlFlushDelay sets how long acknowledgements wait for a
// request's flush, and returns the old delay's restore.
func SetControlFlushDelay(d time.Duration) (restore func()) {
	old := controlFlushDelay.Swap(int64(d))
	return func() { controlFlushDelay.Store(old) }
}
