package punch

import (
	"container/list"
	"time"
)

// Bounds of the store of punched introductions' nonces (replay
// protection: the same introduction is not punched twice).
const (
	// nonceTTL is how long a nonce is remembered; the relay refuses an
	// introduction older than its replay window (2 min) anyway.
	nonceTTL = 10 * time.Minute
	// maxNonces bounds the store, all peers together.
	maxNonces = 4096
	// maxNoncesPerPeer is one peer's share: a peer's paths manager punches
	// it every 5 s at most after a failure, then every RetryAfter (30 s),
	// and answers its introductions at most once a second, so a peer that
	// is not flooding stays far below 64 in most 10 minutes; a peer
	// introduced in a loop only forgets its own older nonces, and it takes
	// 64 such peers to reach maxNonces.
	maxNoncesPerPeer = 64
)

// nonceStore remembers introductions' nonces per peer for nonceTTL.
// When a peer's share or the store is full, the nonce added least
// recently (the peer's own, or the store's) is forgotten to make room:
// a new introduction is never refused for room, so a flood delays no
// one's punch; it only shortens the flooding peer's own replay horizon
// (and, from maxNoncesPerPeer flooding peers, everyone's). Replay
// protection is the lesser loss: only the relay delivers introductions,
// and it refuses reused nonces itself; the probes' keys bind both node
// IDs, and QUIC's mTLS authenticates the peer. The zero value is empty.
type nonceStore struct {
	byKey map[nonceKey]*nonceEntry
	order list.List             // of *nonceEntry, least recently added first
	peers map[string]*list.List // peer → its *nonceEntry, least recently added first
}

type nonceKey struct{ peer, nonce string }

type nonceEntry struct {
	key       nonceKey
	at        time.Time
	all, peer *list.Element // in order and in peers[key.peer]
}

// add remembers peer's nonce as of now, unless it is remembered already
// (a replay: it reports true). evicted is how many nonces it forgot to
// make room (expired ones are not counted).
func (st *nonceStore) add(peer, nonce string, now time.Time) (replay bool, evicted int) {
	if st.byKey == nil {
		st.byKey, st.peers = map[nonceKey]*nonceEntry{}, map[string]*list.List{}
	}
	for f := st.order.Front(); f != nil && now.Sub(f.Value.(*nonceEntry).at) > nonceTTL; f = st.order.Front() {
		st.remove(f.Value.(*nonceEntry))
	}
	k := nonceKey{peer, nonce}
	if _, ok := st.byKey[k]; ok {
		return true, 0
	}
	if own := st.peers[peer]; own != nil && own.Len() >= maxNoncesPerPeer {
		st.remove(own.Front().Value.(*nonceEntry))
		evicted++
	}
	if len(st.byKey) >= maxNonces {
		st.remove(st.order.Front().Value.(*nonceEntry))
		evicted++
	}
	own := st.peers[peer]
	if own == nil {
		own = list.New()
		st.peers[peer] = own
	}
	e := &nonceEntry{key: k, at: now}
	e.all, e.peer = st.order.PushBack(e), own.PushBack(e)
	st.byKey[k] = e
	return false, evicted
}

func (st *nonceStore) remove(e *nonceEntry) {
	delete(st.byKey, e.key)
	st.order.Remove(e.all)
	own := st.peers[e.key.peer]
	own.Remove(e.peer)
	if own.Len() == 0 {
		delete(st.peers, e.key.peer)
	}
}

// len is the number of nonces remembered.
func (st *nonceStore) len() int { return len(st.byKey) }

// peerLen is the number of peer's nonces remembered.
func (st *nonceStore) peerLen(peer string) int {
	if l := st.peers[peer]; l != nil {
		return l.Len()
	}
	return 0
}
