package audit

import (
	"fmt"
	"time"
)

// The size bound (Config.MaxBytes): a node cut off from its control plane
// keeps its records on disk up to it, loses what comes past it (counted,
// logged, then noted in the chain), and Prune makes room again once the
// control plane holds the oldest files.

// overBound reports whether pending more bytes would take the log past
// MaxBytes, and if so counts the record as lost. Writer-owned.
func (l *Log) overBound(pending int) bool {
	if l.cfg.MaxBytes <= 0 || l.seg.total()+int64(pending) <= l.cfg.MaxBytes {
		return false
	}
	l.capped++
	total := l.droppedTotal.Add(1)
	if now := time.Now().UnixNano(); now-l.lastLoud.Load() > int64(time.Second) {
		l.lastLoud.Store(now)
		l.cfg.Logger.Error("audit: log at its size bound (records not shipped yet), records lost", "lostTotal", total, "maxBytes", l.cfg.MaxBytes)
	}
	return true
}

// boundLost returns the record that says how many records were lost at
// the bound, once there is room for it (and a little more) besides pending
// bytes. Writer-owned.
func (l *Log) boundLost(pending int) (Record, bool) {
	n := l.capped
	if n == 0 || l.seg.total()+int64(pending)+4096 > l.cfg.MaxBytes {
		return Record{}, false
	}
	l.capped = 0
	return Record{Time: l.cfg.Now().UTC(), Kind: KindAudit, Action: "lost",
		Reason: fmt.Sprintf("%d records lost: the log was at its size bound (%d bytes) with records not shipped yet", n, l.cfg.MaxBytes)}, true
}

// Prune removes rotated files whose records are all at or below seq (the
// control plane holds them), oldest first, while the log takes more than
// half of Config.MaxBytes; without MaxBytes it removes nothing. A pruned
// log starts after seq 1: verify it against the control plane's copy
// (README, Audit log). It returns how many files it removed.
func (l *Log) Prune(seq uint64) int {
	if l.cfg.MaxBytes <= 0 {
		return 0
	}
	return l.seg.pruneThrough(seq, l.cfg.MaxBytes/2)
}
