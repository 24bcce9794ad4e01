package outlier

// The detector's counts mirrored for the request path's unlocked checks
// (Detector.nEjected, nCounting).

// counts reports whether a counter of h is above zero.
func (h *host) counts() bool { return h.c5xx|h.cGateway|h.cLocal != 0 }

// syncLocked publishes ejected and counting to their mirrors; every method that
// changes them calls it before it lets go of mu.
func (d *Detector) syncLocked() {
	d.nEjected.Store(int64(d.ejected))
	d.nCounting.Store(int64(d.counting))
}

// clearLocked restarts h's counters.
func (d *Detector) clearLocked(h *host) {
	if h.counts() {
		d.counting--
	}
	h.c5xx, h.cGateway, h.cLocal = 0, 0, 0
}
