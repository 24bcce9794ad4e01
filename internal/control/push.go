package control

import (
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// pushBatch is one batch of commits the feed read, followed until every
// stream it woke has written an update holding it (or had nothing of it
// to send, or ended): fogmesh_control_push_seconds is then the time from
// the commit's wake-up of the feed to the last of those writes. It
// measures the push path inside the control plane, without a load tool,
// and the tool's own delay does not count.
type pushBatch struct {
	rev     uint64    // the batch's last revision
	at      time.Time // when the store's watch woke the feed for it
	pending int       // streams woken that have not written past rev
}

// owePushLocked notes that sub was woken for b (feed.mu held).
func (f *feed) owePushLocked(sub *feedSub, b *pushBatch) {
	if b == nil || f.pushHist == nil {
		return
	}
	b.pending++
	sub.owed = append(sub.owed, b)
}

// served tells the feed that sub has written (or had nothing to write)
// everything up to rev.
func (f *feed) served(sub *feedSub, rev uint64) {
	if f.pushHist == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.settleLocked(sub, rev)
}

// settleLocked counts sub out of its batches up to rev; the last stream
// of a batch records its time.
func (f *feed) settleLocked(sub *feedSub, rev uint64) {
	i := 0
	for ; i < len(sub.owed) && sub.owed[i].rev <= rev; i++ {
		b := sub.owed[i]
		if b.pending--; b.pending == 0 {
			f.pushHist.Update(time.Since(b.at).Seconds())
		}
	}
	if i > 0 {
		sub.owed = append(sub.owed[:0], sub.owed[i:]...)
	}
}

// measurePush makes the feed record its batches' push time in h.
func (f *feed) measurePush(h *metrics.Histogram) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pushHist = h
}
