package audit

import (
	"bytes"
	"context"
	"crypto"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Config configures a Log. The zero value works except Dir and Node.
type Config struct {
	// Dir holds the log's files. Required.
	Dir string
	// Node names the chain's owner; it is written into every record.
	// Required.
	Node string
	// Name is the active file's name (default "audit.log"); rotated files
	// are Name.<first seq, 20 digits>.
	Name string
	// MaxFileBytes rotates the active file before it grows past this
	// (default 16 MiB).
	MaxFileBytes int64
	// MaxFiles is how many rotated files are kept; older ones are deleted.
	// Default 0 keeps every file: an agent must not delete records it has
	// not shipped yet.
	MaxFiles int
	// Signer, if set, signs checkpoints (the node's key: ECDSA P-256 from
	// the node certificate). Nil: no checkpoints are written.
	Signer crypto.Signer
	// CheckpointEvery writes a checkpoint after this many records
	// (default 1000).
	CheckpointEvery int
	// CheckpointInterval writes a checkpoint this long after the first
	// record not yet covered by one (default 1 minute). Close always
	// writes one if any record is not covered.
	CheckpointInterval time.Duration
	// MaxBytes, if set, bounds the log's files on disk (a node cut off from
	// its control plane keeps every record it has not shipped): a record
	// that would take them past it is dropped, counted in Dropped and
	// logged, and a "lost" record in the chain says how many once there is
	// room again. Prune makes room by removing shipped rotated files.
	// 0: no bound. Rotation (MaxFileBytes) should be well below it.
	MaxBytes int64
	// Buffer is how many records Append can queue before it blocks
	// (default 8192).
	Buffer int
	// BlockFor is how long Append waits for room in a full buffer before
	// it gives up with ErrFull (default 50ms). See Append.
	BlockFor time.Duration
	// NoSync skips fsync. Only for tests and benchmarks: a crash then may
	// lose records that Append and even Flush reported written.
	NoSync bool
	// OnWrite, if set, is called by the writer after each batch is on disk
	// with the last seq written. It must not block.
	OnWrite func(lastSeq uint64)
	Logger  *slog.Logger // nil = discard
	// Now is the clock (default time.Now).
	Now func() time.Time
}

func (c *Config) validate() error {
	if c.Dir == "" {
		return errors.New("audit: dir is required")
	}
	if c.Node == "" {
		return errors.New("audit: node is required")
	}
	if c.Name == "" {
		c.Name = "audit.log"
	}
	if c.MaxFileBytes <= 0 {
		c.MaxFileBytes = 16 << 20
	}
	if c.CheckpointEvery <= 0 {
		c.CheckpointEvery = 1000
	}
	if c.CheckpointInterval <= 0 {
		c.CheckpointInterval = time.Minute
	}
	if c.Buffer <= 0 {
		c.Buffer = 8192
	}
	if c.BlockFor <= 0 {
		c.BlockFor = 50 * time.Millisecond
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

// Errors of Append.
var (
	// ErrFull: the buffer stayed full for Config.BlockFor and the record
	// was not queued. The loss is counted (Dropped), logged, and written
	// into the chain itself as a KindAudit "lost" record, so it is never
	// silent.
	ErrFull = errors.New("audit: buffer full, record lost")
	// ErrClosed: the log is closed.
	ErrClosed = errors.New("audit: log closed")
)

// maxBatch bounds how many queued records the writer takes per write+fsync.
const maxBatch = 1024

// maxPending bounds encoded records held in memory while the disk refuses
// writes; above it the writer stops taking records, the buffer fills, and
// Append reports ErrFull.
const maxPending = 16 << 20

type item struct {
	rec   Record
	flush chan error // non-nil: a Flush marker, not a record
}

// Log is an append-only, hash-chained audit log. Append is safe for
// concurrent use and does not wait for the disk: records go through a
// buffered channel to one writer goroutine, which encodes, chains, writes
// and fsyncs them in batches (group commit: a record is on disk at most
// one batch after Append returns; Flush waits for it).
type Log struct {
	cfg Config
	seg *segments
	ch  chan item

	mu     sync.RWMutex // guards closed; held for reading by Append while it sends
	closed bool

	closing  chan struct{} // closed by Close, so a writer waiting on the disk stops
	closeMu  sync.Once     // closes closing, before Close takes mu
	done     chan struct{} // closed when the writer has ended
	closeErr error         // set by the writer before done

	dropped      atomic.Uint64 // lost, not yet written into the chain
	capped       uint64        // writer-owned: dropped at MaxBytes, not yet written into the chain
	droppedTotal atomic.Uint64
	writeErrors  atomic.Uint64
	lastLoud     atomic.Int64 // unix nanos of the last drop log line

	stateMu sync.Mutex // guards the following
	seq     uint64
	hash    string

	// Writer-owned.
	pending    []byte // encoded lines the disk refused; retried first
	pendingSeq uint64 // first seq in pending
	uncovered  int    // records since the last checkpoint
	firstUncov time.Time

	testHookWrite func()        // called before each write (export_test.go)
	stalled       chan struct{} // export_test.go
}

// Open opens (or creates) the log in cfg.Dir and starts its writer. A
// torn last line (the process died mid-write) is moved to a .torn-<time>
// file next to the log and reported in the log output; every whole record
// before it is kept and the chain goes on from the last one.
func Open(cfg Config) (*Log, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	seg, t, err := openSegments(cfg.Dir, cfg.Name, cfg.MaxFileBytes, cfg.MaxFiles, cfg.NoSync)
	if err != nil {
		return nil, err
	}
	l := &Log{cfg: cfg, seg: seg, ch: make(chan item, cfg.Buffer), closing: make(chan struct{}), done: make(chan struct{}), hash: Genesis}
	if t.torn != "" {
		cfg.Logger.Error("audit: log ended with a partial record (crash mid-write?); moved it aside, the chain goes on from the last whole record",
			"bytes", t.tornBytes, "saved", t.torn)
	}
	if t.last != nil {
		if t.last.Node != cfg.Node {
			seg.close()
			return nil, fmt.Errorf("audit: %s holds the chain of node %q, not %q", cfg.Dir, t.last.Node, cfg.Node)
		}
		l.seq, l.hash = t.last.Seq, t.last.Hash
		if t.last.Kind != KindCheckpoint {
			l.uncovered = 1 // the previous run did not close cleanly
			l.firstUncov = cfg.Now()
		}
	}
	go l.run()
	return l, nil
}

// Append queues a record. It sets Seq, Node, Prev and Hash (the caller's
// values are ignored) and Time if zero; strings are cut at MaxFieldBytes.
//
// When the buffer is full Append blocks for up to Config.BlockFor, so a
// burst waits for the disk instead of losing records. If it is still full
// (the disk has stalled), Append returns ErrFull rather than stall the
// data path: the loss is counted, logged at error level (at most once a
// second), and recorded in the chain as soon as the writer catches up.
func (l *Log) Append(rec Record) error {
	if rec.Kind == KindAudit && rec.Action == ActionDamaged {
		return errReserved // only the shipper makes damage markers (damage.go)
	}
	rec.normalize(l.cfg.Now())
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return ErrClosed
	}
	select {
	case l.ch <- item{rec: rec}:
		return nil
	default:
	}
	t := time.NewTimer(l.cfg.BlockFor)
	defer t.Stop()
	select {
	case l.ch <- item{rec: rec}:
		return nil
	case <-t.C:
	}
	l.dropped.Add(1)
	total := l.droppedTotal.Add(1)
	now := time.Now().UnixNano()
	if last := l.lastLoud.Load(); now-last > int64(time.Second) && l.lastLoud.CompareAndSwap(last, now) {
		l.cfg.Logger.Error("audit: buffer full, records lost (disk stalled?)", "lostTotal", total, "buffer", l.cfg.Buffer)
	}
	return ErrFull
}

// Flush waits until every record appended before it is written (and
// fsynced, unless NoSync). It returns the last write error if the disk
// still refuses them.
func (l *Log) Flush(ctx context.Context) error {
	done := make(chan error, 1)
	l.mu.RLock()
	if l.closed {
		l.mu.RUnlock()
		return ErrClosed
	}
	select {
	case l.ch <- item{flush: done}:
		l.mu.RUnlock()
	case <-ctx.Done():
		l.mu.RUnlock()
		return ctx.Err()
	case <-l.closing: // Close waits for mu: let go of it
		l.mu.RUnlock()
		return ErrClosed
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close writes what is queued, a final checkpoint (with a Signer), and
// closes the files. It is idempotent and waits for the writer.
func (l *Log) Close() error {
	// closing first, without mu: a Flush blocked on a full buffer holds mu
	// for reading and gives it up when closing is closed.
	l.closeMu.Do(func() { close(l.closing) })
	l.mu.Lock()
	if !l.closed {
		l.closed = true
		close(l.ch)
	}
	l.mu.Unlock()
	<-l.done
	return l.closeErr
}

// Last returns the seq and hash of the last record written (0 and Genesis
// for an empty log).
func (l *Log) Last() (uint64, string) {
	l.stateMu.Lock()
	defer l.stateMu.Unlock()
	return l.seq, l.hash
}

// Dropped returns how many records Append lost to a full buffer.
func (l *Log) Dropped() uint64 { return l.droppedTotal.Load() }

// WriteErrors returns how many batch writes failed (and were retried).
func (l *Log) WriteErrors() uint64 { return l.writeErrors.Load() }

// Files lists the log's files in chain order, for Verify.
func (l *Log) Files() ([]string, error) { return l.seg.files() }

// Verify verifies the log's files with v; records still queued are not
// covered (Flush first).
func (l *Log) Verify(v Verifier) (*Report, error) { return l.seg.verify(v) }

// VerifyAnchored verifies the log's files with v, anchored at the last
// record the log wrote (v.Head is replaced): while the log is open its own
// state is the head, and edits of the files behind its back (records cut
// off or appended) show. What it found at Open is only as good as the
// files were then: compare it with a head kept elsewhere (the control
// plane keeps its own in its store).
func (l *Log) VerifyAnchored(v Verifier) (*Report, error) { return l.seg.verifyAnchored(v) }

// ReadFrom returns up to max records from seq on, as written to disk (a
// record still in the buffer is not returned yet). It returns ErrNotFound
// (wrapped) if seq is no longer in the files, and a *DamageError if the
// record at seq is on a line that does not read (see DamageMarker).
func (l *Log) ReadFrom(seq uint64, max int) ([]Record, error) {
	if seq == 0 {
		seq = 1
	}
	return l.seg.readFrom(seq, max)
}

// run is the writer goroutine: it owns the chain state and the files.
func (l *Log) run() {
	defer close(l.done)
	tick := time.NewTicker(l.checkpointTick())
	defer tick.Stop()
	batch := make([]item, 0, 64)
	for {
		in := l.ch
		if len(l.pending) > maxPending {
			in = nil // let the buffer fill; Append reports the loss
		}
		select {
		case it, ok := <-in:
			if !ok {
				l.finish()
				return
			}
			batch = append(batch[:0], it)
			closed := false
		drain:
			for len(batch) < maxBatch {
				select {
				case it, ok := <-l.ch:
					if !ok {
						closed = true
						break drain
					}
					batch = append(batch, it)
				default:
					break drain
				}
			}
			l.writeBatch(batch)
			clear(batch)
			if closed {
				l.finish()
				return
			}
		case <-l.closingWhile(in == nil):
			// The disk has refused writes long enough to stop taking
			// records; give up on what is still queued.
			lost := len(l.ch)
			l.finish()
			if lost > 0 {
				l.closeErr = errors.Join(fmt.Errorf("audit: %d queued records not written", lost), l.closeErr)
			}
			return
		case <-tick.C:
			if l.cfg.Signer != nil && l.uncovered > 0 && l.cfg.Now().Sub(l.firstUncov) >= l.cfg.CheckpointInterval {
				l.writeBatch(nil)
			} else if len(l.pending) > 0 || l.dropped.Load() > 0 {
				l.writeBatch(nil) // retry what the disk refused; report losses
			}
		}
	}
}

// closingWhile returns l.closing if cond, else nil (never ready).
func (l *Log) closingWhile(cond bool) <-chan struct{} {
	if cond {
		return l.closing
	}
	return nil
}

func (l *Log) checkpointTick() time.Duration {
	d := l.cfg.CheckpointInterval / 4
	return min(max(d, 10*time.Millisecond), time.Second)
}

// writeBatch chains and writes the batch's records (with a lost-records
// record first and checkpoints where due), then answers its flushes.
func (l *Log) writeBatch(batch []item) {
	var flushes []chan error
	buf := l.pending
	l.pending = nil
	first := l.pendingSeq
	if len(buf) == 0 {
		first = 0
	}
	l.stateMu.Lock()
	seq, hash := l.seq, l.hash
	l.stateMu.Unlock()
	add := func(r Record) {
		r.Seq, r.Node, r.Prev = seq+1, l.cfg.Node, hash
		h, err := r.ComputeHash()
		if err == nil && r.Kind == KindCheckpoint {
			r.Hash = h
			r.Sig, err = sign(l.cfg.Signer, h)
		}
		var line []byte
		if err == nil {
			r.Hash = h
			line, err = r.MarshalLine()
		}
		if err != nil {
			// Cannot happen for a normalized record; never write a
			// record that breaks the chain.
			l.cfg.Logger.Error("audit: cannot encode record", "kind", r.Kind, "action", r.Action, "err", err)
			return
		}
		if r.Kind != KindCheckpoint && r.Action != "lost" && l.overBound(len(buf)+len(line)) {
			return
		}
		if first == 0 {
			first = r.Seq
		}
		buf = append(buf, line...)
		seq, hash = r.Seq, r.Hash
		if r.Kind == KindCheckpoint {
			l.uncovered = 0
			return
		}
		if l.uncovered == 0 {
			l.firstUncov = l.cfg.Now()
		}
		l.uncovered++
	}
	checkpoint := func(force bool) {
		if l.cfg.Signer == nil || l.uncovered == 0 {
			return
		}
		if force || l.uncovered >= l.cfg.CheckpointEvery {
			add(Record{Time: l.cfg.Now().UTC(), Kind: KindCheckpoint, Action: "checkpoint",
				Object: "key:" + KeyID(l.cfg.Signer.Public()),
				Reason: fmt.Sprintf("covers seq %d and every record before it", seq)})
		}
	}
	if n := l.dropped.Swap(0); n > 0 {
		add(Record{Time: l.cfg.Now().UTC(), Kind: KindAudit, Action: "lost",
			Reason: fmt.Sprintf("%d records lost: the buffer stayed full (disk stalled)", n)})
	}
	if r, ok := l.boundLost(len(buf)); ok {
		add(r)
	}
	for _, it := range batch {
		if it.flush != nil {
			flushes = append(flushes, it.flush)
			continue
		}
		add(it.rec)
		checkpoint(false)
	}
	if batch == nil {
		checkpoint(true) // the interval tick or Close
	}
	var err error
	if len(buf) > 0 {
		if l.testHookWrite != nil {
			l.testHookWrite()
		}
		var n int
		n, err = l.seg.write(buf, first, Head{Seq: seq, Hash: hash})
		if err != nil {
			l.writeErrors.Add(1)
			l.cfg.Logger.Error("audit: write failed, will retry", "records", seq-first+1, "err", err)
			l.pending = buf[n:]
			l.pendingSeq = first + uint64(bytes.Count(buf[:n], []byte{'\n'}))
		}
	}
	l.stateMu.Lock()
	l.seq, l.hash = seq, hash
	l.stateMu.Unlock()
	if err == nil && len(buf) > 0 && l.cfg.OnWrite != nil {
		l.cfg.OnWrite(seq)
	}
	for _, f := range flushes {
		f <- err
	}
}

// finish drains nothing (the channel is closed and empty), writes a final
// checkpoint and closes the files.
func (l *Log) finish() {
	l.writeBatch(nil)
	if len(l.pending) > 0 {
		l.writeBatch(nil) // one more try
	}
	err := l.seg.close()
	if len(l.pending) > 0 {
		err = errors.Join(fmt.Errorf("audit: %d bytes of records could not be written", len(l.pending)), err)
	}
	l.closeErr = err
}
