package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/store"
	"github.com/fogmesh/fogmesh/internal/syncproto"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// feed is the control plane's one reader of the store's change log. It
// decodes each committed object once and encodes its wire.Resource once,
// and keeps the current state and a bounded log of recent changes, so an
// agent stream only filters what it wants and frames it: a change costs
// one decode and one encode however many agents get it (before, every
// stream read the log, decoded and encoded each change for itself).
type feed struct {
	st     store.Backend
	log    *slog.Logger
	maxLog int           // entries kept in recent
	maxAge time.Duration // how old a shared snapshot may be before a new one is built

	mu    sync.Mutex
	rev   uint64                // the store revision the feed holds
	state map[string]*feedEntry // live objects by store key
	// bySvc indexes state by the service each object is or belongs to
	// ("ns/name" -> key -> entry), so a scoped snapshot reads its scope
	// only; nodes holds the nodes by name (a scoped snapshot takes the
	// ones its endpoints name), other the rest of no one service
	// (authorization policies).
	bySvc map[string]map[string]*feedEntry
	nodes map[string]*feedEntry
	other map[string]*feedEntry
	// recent are the changes after floor in commit order: each entry is a
	// key's state at the end (upTo) of the batch that read it.
	recent []*feedEntry
	floor  uint64
	wake   chan struct{} // closed when rev moves
	snap   *feedSnap     // the last full snapshot built, shared
	snaps  int           // full snapshots built (tests)

	// Subscribers to wake after a commit: unscoped ones at every commit,
	// scoped ones only when something of their scope changed (or a node
	// or an object of no one service), so a change to one service wakes
	// its subscribers, not every stream.
	subsAll    map[*feedSub]bool
	subsScoped map[*feedSub]bool
	subsSvc    map[string]map[*feedSub]bool // "ns/name" ->
	subsNS     map[string]map[*feedSub]bool // namespace of "ns/*" ->
	subsNode   map[string]map[*feedSub]bool // node a scoped subscriber holds ->

	pushHist *metrics.Histogram // commit to written at every stream woken (push.go); nil: not measured
}

// feedSub is one stream's wake-up: a token in ch means "look again";
// with notify set (an agent stream's sender), notify is called instead, with
// feed.mu held, so it must not block nor call the feed.
type feedSub struct {
	f      syncproto.Filter
	ch     chan struct{}
	notify func()
	nodes  map[string]bool // scoped: the nodes it holds (under feed.mu)
	owed   []*pushBatch    // batches it was woken for and has not written yet (under feed.mu)
}

// subscribe registers a stream's filter; it is woken (sub.ch) after the
// commits that may concern it.
func (f *feed) subscribe(fl syncproto.Filter) *feedSub {
	return f.register(&feedSub{f: fl, ch: make(chan struct{}, 1)})
}

// subscribeNotify is subscribe for a subscriber woken by a call of notify
// rather than on a channel it waits on (sender.go: no goroutine per stream
// waits for commits).
func (f *feed) subscribeNotify(fl syncproto.Filter, notify func()) *feedSub {
	return f.register(&feedSub{f: fl, notify: notify})
}

func (f *feed) register(sub *feedSub) *feedSub {
	fl := sub.f
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.subsAll == nil {
		f.subsAll, f.subsScoped = map[*feedSub]bool{}, map[*feedSub]bool{}
		f.subsSvc, f.subsNS = map[string]map[*feedSub]bool{}, map[string]map[*feedSub]bool{}
		f.subsNode = map[string]map[*feedSub]bool{}
	}
	if !fl.Scoped() {
		f.subsAll[sub] = true
		return sub
	}
	f.subsScoped[sub] = true
	svcs, nss := fl.ScopeEntries()
	for _, k := range svcs {
		addSub(f.subsSvc, k, sub)
	}
	for _, k := range nss {
		addSub(f.subsNS, k, sub)
	}
	return sub
}

func addSub(m map[string]map[*feedSub]bool, k string, sub *feedSub) {
	if m[k] == nil {
		m[k] = map[*feedSub]bool{}
	}
	m[k][sub] = true
}

func delSub(m map[string]map[*feedSub]bool, k string, sub *feedSub) {
	delete(m[k], sub)
	if len(m[k]) == 0 {
		delete(m, k)
	}
}

// unsubscribe forgets a stream's registration.
func (f *feed) unsubscribe(sub *feedSub) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.subsAll, sub)
	delete(f.subsScoped, sub)
	svcs, nss := sub.f.ScopeEntries()
	for _, k := range svcs {
		delSub(f.subsSvc, k, sub)
	}
	for _, k := range nss {
		delSub(f.subsNS, k, sub)
	}
	for n := range sub.nodes {
		delSub(f.subsNode, n, sub)
	}
	if f.pushHist != nil {
		f.settleLocked(sub, ^uint64(0)) // an ended stream holds up no batch
	}
}

// widen registers a scoped subscriber's widened filter fl (a later
// subscribe, wire.FeatureScopeAdd) and the entries it added, so commits to
// them wake it.
func (f *feed) widen(sub *feedSub, fl syncproto.Filter, added []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	sub.f = fl
	for _, k := range added {
		if ns, name, _ := strings.Cut(k, "/"); name == "*" {
			addSub(f.subsNS, ns, sub)
		} else {
			addSub(f.subsSvc, k, sub)
		}
	}
}

// holdNodes records which nodes a scoped subscriber holds now, so that a
// node's change wakes only the streams that hold it (a node that joins
// is not work for every scoped stream).
func (f *feed) holdNodes(sub *feedSub, add, drop []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if sub.nodes == nil {
		sub.nodes = map[string]bool{}
	}
	for _, n := range drop {
		if sub.nodes[n] {
			delete(sub.nodes, n)
			delSub(f.subsNode, n, sub)
		}
	}
	for _, n := range add {
		if !sub.nodes[n] {
			sub.nodes[n] = true
			addSub(f.subsNode, n, sub)
		}
	}
}

func (sub *feedSub) wake() {
	if sub.notify != nil {
		sub.notify()
		return
	}
	select {
	case sub.ch <- struct{}{}:
	default:
	}
}

// wakeLocked wakes the subscribers a batch of entries concerns; touched
// are the services they are or belong to (before and after the change),
// nodes the nodes that changed, other says an entry belongs to no one
// service and is no node (an authorization policy).
// b, if not nil, is the batch they are woken for (push.go).
func (f *feed) wakeLocked(touched, nodes map[string]bool, other bool, b *pushBatch) {
	wake := func(sub *feedSub) {
		sub.wake()
		f.owePushLocked(sub, b)
	}
	for sub := range f.subsAll {
		wake(sub)
	}
	for n := range nodes {
		for sub := range f.subsNode[n] {
			wake(sub)
		}
	}
	if other {
		for sub := range f.subsScoped {
			wake(sub)
		}
		return
	}
	for svc := range touched {
		for sub := range f.subsSvc[svc] {
			wake(sub)
		}
		ns, _, _ := strings.Cut(svc, "/")
		for sub := range f.subsNS[ns] {
			wake(sub)
		}
	}
}

// feedEntry is one object's state at a revision, decoded and encoded.
type feedEntry struct {
	key     string
	rev     uint64 // the revision the key last changed at
	upTo    uint64 // the end of the batch this entry was read in
	ref     wire.ResourceRef
	obj     api.Object // nil when deleted
	res     wire.Resource
	enc     []byte // res encoded; for a deleted key, ref encoded
	refEnc  []byte // ref encoded
	deleted bool
	svc     string // the service it is or belongs to ("" for none)
	node    string // an endpoint's node
}

// feedSnap is the full state at one revision, shared by every subscriber
// that takes a snapshot while it is current.
type feedSnap struct {
	rev     uint64
	at      time.Time
	entries []*feedEntry // by key
	foreign bool         // some entry is a region's (not the global plane's): agentGate filters
	once    sync.Once
	shared  *update // the update of a subscriber that selects everything (whole)
}

const (
	defaultFeedLog    = 20000
	defaultSnapMaxAge = time.Second
)

// newFeed loads the store's objects once.
func newFeed(st store.Backend, log *slog.Logger) (*feed, error) {
	f := &feed{st: st, log: log, maxLog: defaultFeedLog, maxAge: defaultSnapMaxAge, wake: make(chan struct{})}
	if err := f.reload(); err != nil {
		return nil, err
	}
	return f, nil
}

// isResourceKey tells whether a store key holds an object agents receive.
func isResourceKey(key string) bool {
	kind, _, _ := strings.Cut(key, "/")
	return slices.Contains(syncproto.AllTypes, kind)
}

// reload reads every object again (at start, and when the feed fell behind
// the store's log): recent is emptied, so streams behind resume through
// the store's log of keys (resume).
func (f *feed) reload() error {
	kvs, rev, err := f.st.List("")
	if err != nil {
		return fmt.Errorf("feed: list store: %w", err)
	}
	state := make(map[string]*feedEntry, len(kvs))
	for _, kv := range kvs {
		if !isResourceKey(kv.Key) {
			continue
		}
		e, err := newFeedEntry(store.Change{Key: kv.Key, Rev: kv.Rev, Value: kv.Value}, rev)
		if err != nil {
			f.log.Error("control: stored object not sent to agents", "key", kv.Key, "err", err)
			continue
		}
		state[kv.Key] = e
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.state, f.bySvc, f.nodes, f.other = state, map[string]map[string]*feedEntry{}, map[string]*feedEntry{}, map[string]*feedEntry{}
	for _, e := range state {
		f.indexLocked(e)
	}
	f.recent, f.floor, f.snap = nil, rev, nil
	f.advanceLocked(rev)
	f.wakeLocked(nil, nil, true, nil)
	return nil
}

func (f *feed) indexLocked(e *feedEntry) {
	if e.ref.Type == api.KindNode {
		f.nodes[e.ref.Name] = e
		return
	}
	if e.svc == "" {
		f.other[e.key] = e
		return
	}
	m := f.bySvc[e.svc]
	if m == nil {
		m = map[string]*feedEntry{}
		f.bySvc[e.svc] = m
	}
	m[e.key] = e
}

func (f *feed) unindexLocked(e *feedEntry) {
	if e.ref.Type == api.KindNode {
		delete(f.nodes, e.ref.Name)
		return
	}
	if e.svc == "" {
		delete(f.other, e.key)
		return
	}
	if m := f.bySvc[e.svc]; m != nil {
		delete(m, e.key)
		if len(m) == 0 {
			delete(f.bySvc, e.svc)
		}
	}
}

func (f *feed) advanceLocked(rev uint64) {
	if rev != f.rev || f.wake == nil {
		f.rev = rev
		close(f.wake)
		f.wake = make(chan struct{})
	}
}

// newFeedEntry decodes and encodes one change once.
func newFeedEntry(ch store.Change, upTo uint64) (*feedEntry, error) {
	kind, name, _ := strings.Cut(ch.Key, "/")
	e := &feedEntry{key: ch.Key, rev: ch.Rev, upTo: upTo, deleted: ch.Deleted, ref: wire.ResourceRef{Type: kind, Name: name}}
	var err error
	if e.refEnc, err = json.Marshal(e.ref); err != nil {
		return nil, err
	}
	if ch.Deleted {
		e.enc = e.refEnc
		return e, nil
	}
	o, err := decodeKV(store.KV{Key: ch.Key, Rev: ch.Rev, Value: ch.Value})
	if err != nil {
		return nil, err
	}
	if e.res, err = wire.NewResource(o); err != nil {
		return nil, fmt.Errorf("encode %s: %w", ch.Key, err)
	}
	if e.enc, err = json.Marshal(e.res); err != nil {
		return nil, fmt.Errorf("encode %s: %w", ch.Key, err)
	}
	// The body is the end of the encoding (wire.Resource's last field,
	// compact either way): share it rather than keep a second copy of
	// every object (≈ 15 MB of live heap at 50,000 endpoints).
	if b := e.res.Body; len(e.enc) > len(b) {
		if tail := e.enc[len(e.enc)-1-len(b) : len(e.enc)-1]; bytes.Equal(tail, b) {
			e.res.Body = tail[:len(tail):len(tail)]
		}
	}
	e.obj, e.ref = o, e.res.ResourceRef
	e.svc, _ = syncproto.ServiceOf(o)
	if ep, ok := o.(*api.Endpoint); ok {
		e.node = ep.Spec.Node
	}
	return e, nil
}

// run follows the store until ctx ends.
func (f *feed) run(ctx context.Context) {
	woke := time.Now()
	for {
		w := f.st.Watch()
		if err := f.catchUp(woke); err != nil {
			f.log.Error("control: feed cannot read the store's changes", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-w:
			woke = time.Now()
		}
	}
}

// catchUp reads what was committed after the feed's revision, decodes it
// once and appends it; woke is when the store's watch told of a commit.
func (f *feed) catchUp(woke time.Time) error {
	f.mu.Lock()
	from := f.rev
	f.mu.Unlock()
	changes, cur, err := f.st.ChangesSince(from)
	if errors.Is(err, store.ErrCompacted) {
		return f.reload()
	}
	if err != nil {
		return err
	}
	if cur == from {
		return nil
	}
	entries := make([]*feedEntry, 0, len(changes))
	for _, ch := range changes {
		if !isResourceKey(ch.Key) {
			continue
		}
		e, err := newFeedEntry(ch, cur)
		if err != nil {
			f.log.Error("control: stored object not sent to agents", "key", ch.Key, "err", err)
			continue
		}
		entries = append(entries, e)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	touched, nodes, other := map[string]bool{}, map[string]bool{}, false
	for _, e := range entries {
		if old := f.state[e.key]; old != nil {
			f.unindexLocked(old)
			if e.deleted {
				e.svc, e.node = old.svc, old.node // what it belonged to, for scoped streams
			}
			if old.svc != "" {
				touched[old.svc] = true // it may leave that service's scope
			}
		}
		switch {
		case e.svc != "":
			touched[e.svc] = true
		case e.ref.Type == api.KindNode:
			nodes[e.ref.Name] = true
		default:
			other = true
		}
		if e.deleted {
			delete(f.state, e.key)
		} else {
			f.state[e.key] = e
			f.indexLocked(e)
		}
	}
	f.recent = append(f.recent, entries...)
	if len(f.recent) > f.maxLog {
		// Drop whole batches, oldest first, down to 3/4 of the bound.
		i := len(f.recent) - f.maxLog*3/4
		for i < len(f.recent) && f.recent[i].upTo == f.recent[i-1].upTo {
			i++
		}
		f.floor = f.recent[i-1].upTo
		f.recent = slices.Clone(f.recent[i:])
	}
	f.advanceLocked(cur)
	f.wakeLocked(touched, nodes, other, &pushBatch{rev: cur, at: woke})
	return nil
}

// watch returns the feed's revision and a channel closed when it moves.
func (f *feed) watch() (uint64, <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rev, f.wake
}

// since returns the latest state of each key that changed after known,
// each once, and the feed's revision; ok is false when the feed's log does
// not reach back to known.
func (f *feed) since(known uint64) (out []*feedEntry, rev uint64, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if known >= f.rev {
		return nil, f.rev, true
	}
	if known < f.floor {
		return nil, f.rev, false
	}
	i := sort.Search(len(f.recent), func(i int) bool { return f.recent[i].upTo > known })
	tail := f.recent[i:]
	if len(tail) > 0 && tail[0].upTo == tail[len(tail)-1].upTo {
		// One batch: each key is there once.
		for _, e := range tail {
			if e.rev > known {
				out = append(out, e)
			}
		}
		return out, f.rev, true
	}
	// Several batches: coalesce to each key's latest state.
	last := make(map[string]int, len(tail))
	for j, e := range tail {
		last[e.key] = j
	}
	for j, e := range tail {
		if last[e.key] == j && e.rev > known {
			out = append(out, e)
		}
	}
	return out, f.rev, true
}

// resume is since for a subscriber behind the feed's log: the store's log
// names the keys changed after known, and each key's state is taken from
// the feed (at its revision, returned), not decoded again.
// store.ErrCompacted means a snapshot is needed.
func (f *feed) resume(known uint64) ([]*feedEntry, uint64, error) {
	keys, _, err := f.st.ChangedKeys(known)
	if err != nil {
		return nil, 0, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]*feedEntry, 0, len(keys))
	for _, k := range keys {
		if !isResourceKey(k) {
			continue
		}
		if e := f.state[k]; e != nil {
			out = append(out, e)
			continue
		}
		// Gone at the feed's revision (or not yet there: the removal of
		// something the subscriber does not hold is harmless).
		e, err := newFeedEntry(store.Change{Key: k, Rev: f.rev, Deleted: true}, f.rev)
		if err != nil {
			return nil, 0, err
		}
		out = append(out, e)
	}
	return out, f.rev, nil
}

// snapshot returns the full state, shared: one built at most maxAge ago
// is reused by every subscriber (each gets a delta from its revision
// next), so N subscribers connecting at once cost one build, not N.
//
// The snapshot is at minRev or later (the subscriber's welcome: it must
// hold at least what it was told is committed).
func (f *feed) snapshot(minRev uint64) *feedSnap {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s := f.snap; s != nil && s.rev >= minRev && (s.rev == f.rev || time.Since(s.at) < f.maxAge && s.rev >= f.floor) {
		return s
	}
	s := &feedSnap{rev: f.rev, at: time.Now(), entries: make([]*feedEntry, 0, len(f.state))}
	for _, e := range f.state {
		s.entries = append(s.entries, e)
		s.foreign = s.foreign || e.obj != nil && e.obj.GetMeta().Owner != ""
	}
	// A stable order: subscribers of one snapshot get the same frames.
	sort.Slice(s.entries, func(i, j int) bool { return s.entries[i].key < s.entries[j].key })
	f.snap = s
	f.snaps++
	return s
}

// scopedSnapshot returns the state of what a scoped filter can select:
// the services in scope and what belongs to them, the objects of no one
// service that are not nodes (authorization policies), and the nodes that
// self and the endpoints in scope name, at the feed's revision. It reads
// the scope only: copying every node and looking at every service for each
// scoped snapshot was O(N) per agent, O(N²) for a fleet reconnecting after
// a restart, under the feed's lock.
func (f *feed) scopedSnapshot(fl syncproto.Filter, self string) ([]*feedEntry, uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*feedEntry
	nodes := map[string]bool{self: true}
	add := func(m map[string]*feedEntry) {
		for _, e := range m {
			out = append(out, e)
			if e.ref.Type == api.KindEndpoint && e.node != "" {
				nodes[e.node] = true
			}
		}
	}
	svcs, nss := fl.ScopeEntries()
	if len(nss) == 0 {
		for _, svc := range svcs {
			add(f.bySvc[svc])
		}
	} else {
		// Whole namespaces: look at every service (rare; a namespace index
		// would make this O(scope) too).
		for svc, m := range f.bySvc {
			if fl.InScope(svc) {
				add(m)
			}
		}
	}
	for _, e := range f.other {
		out = append(out, e)
	}
	for n := range nodes {
		if e := f.nodes[n]; e != nil {
			out = append(out, e)
		}
	}
	return out, f.rev
}

// waitFor waits until the feed holds revision rev (or ctx ends).
func (f *feed) waitFor(ctx context.Context, rev uint64) error {
	for {
		cur, wake := f.watch()
		if cur >= rev {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-wake:
		}
	}
}

// get returns the current state of key, or nil.
func (f *feed) get(key string) *feedEntry {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state[key]
}

// nodeReady returns the Ready and Unreachable flags of node as the feed
// holds them; ok is false when the feed does not hold the node or is
// behind revision rev.
func (f *feed) nodeReady(node string, rev uint64) (ready, unreachable, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.rev < rev {
		return false, false, false
	}
	e := f.nodes[node]
	if e == nil {
		return false, false, false
	}
	n, ok := e.obj.(*api.Node)
	if !ok {
		return false, false, false
	}
	return n.Status.Ready, n.Status.Unreachable, true
}

// unreachableNodes counts the nodes the feed holds marked unreachable and
// still ready (expiry.go).
func (f *feed) unreachableNodes() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, e := range f.nodes {
		if nd, ok := e.obj.(*api.Node); ok && nd.Status.Ready && nd.Status.Unreachable {
			n++
		}
	}
	return n
}

// snapCount is how many full snapshots the feed built (tests).
func (f *feed) snapCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.snaps
}
