package h2up

import "time"

// SetControlFlushDelay sets how long acknowledgements wait for a
// request's flush, and returns the old delay's restore.
func SetControlFlushDelay(d time.Duration) (restore func()) {
	old := controlFlushDelay.Swap(int64(d))
	return func() { controlFlushDelay.Store(old) }
}

// ControlFlushArmed reports whether a connection of p has writeControl's
// timer armed, and whether p has a connection.
func ControlFlushArmed(p *Pool) (armed, found bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.wmu.Lock()
		armed, found = armed || c.ctlArmed, true
		c.wmu.Unlock()
	}
	return armed, found
}
