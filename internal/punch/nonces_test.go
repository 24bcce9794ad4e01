package punch

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/relay"
)

const idC = "spiffe://fogmesh.local/site/c/node/c1"

// nonceOf is a distinct valid introduction nonce (32 hex digits) per i.
func nonceOf(i int) string { return fmt.Sprintf("%032x", i) }

// TestPunchNonceFloodFromOnePeer: a peer introduced in a loop (twice the
// whole store's worth of nonces within the 10 minutes they are kept)
// fills only its own share of the store: its oldest nonces make room for
// its newest, the store stays bounded, another peer's nonce is still
// remembered (its replay refused) and another peer's new introduction is
// punched. Before the store had shares, the flood filled it and every
// introduction, from any peer, was refused for 10 minutes.
func TestPunchNonceFloodFromOnePeer(t *testing.T) {
	p, _ := loopPuncher(t, idB, nil)
	// A done context: Punch registers the introduction, then gives up at
	// once (no candidates to probe anyway).
	done, cancel := context.WithCancel(context.Background())
	cancel()
	punch := func(peer, nonce string) error {
		_, err := p.Punch(done, relay.Introduced{Nonce: nonce, Peer: peer})
		return err
	}
	legit := nonceOf(1 << 40)
	if err := punch(idA, legit); !errors.Is(err, ErrNoPath) {
		t.Fatalf("a's introduction: %v, want ErrNoPath", err)
	}
	const flood = 2 * maxNonces
	var floodErr error
	for i := range flood {
		if err := punch(idC, nonceOf(i)); !errors.Is(err, ErrNoPath) && floodErr == nil {
			floodErr = fmt.Errorf("c's introduction %d: %w", i, err)
		}
	}
	if err := punch(idA, nonceOf(1<<41)); !errors.Is(err, ErrNoPath) {
		t.Errorf("a's introduction after c's flood: %v, want ErrNoPath (punched)", err)
	}
	if err := punch(idA, legit); !errors.Is(err, ErrIntroReplay) {
		t.Errorf("a's first introduction again after c's flood: %v, want ErrIntroReplay (still remembered)", err)
	}
	if err := punch(idC, nonceOf(flood-1)); !errors.Is(err, ErrIntroReplay) {
		t.Errorf("c's newest introduction again: %v, want ErrIntroReplay", err)
	}
	if floodErr != nil {
		t.Errorf("the flooding peer's own new introductions are refused: %v (its oldest should make room)", floodErr)
	}
	p.mu.Lock()
	n, nc := p.nonces.len(), p.nonces.peerLen(idC)
	p.mu.Unlock()
	if n > maxNonces || nc > maxNoncesPerPeer {
		t.Errorf("store holds %d nonces, %d of them c's; want at most %d and %d", n, nc, maxNonces, maxNoncesPerPeer)
	}
	if got, want := p.Stats().NoncesEvicted, uint64(flood-maxNoncesPerPeer); got != want {
		t.Errorf("NoncesEvicted = %d, want %d", got, want)
	}
}

// TestNonceStoreBounds: with many peers introduced in a loop the store
// stays at maxNonces, forgetting the nonce added least recently; a nonce
// is forgotten after nonceTTL, and a peer's share is freed with it.
func TestNonceStoreBounds(t *testing.T) {
	var st nonceStore
	t0 := time.Unix(1_000_000, 0)
	peerOf := func(i int) string { return fmt.Sprintf("spiffe://fogmesh.local/site/s/node/n%d", i) }
	// 2×maxNonces nonces from enough peers that no share fills before
	// the store does.
	const peers = 2 * maxNonces / maxNoncesPerPeer
	evictedTotal := 0
	for i := range 2 * maxNonces {
		replay, evicted := st.add(peerOf(i%peers), nonceOf(i), t0.Add(time.Duration(i)*time.Millisecond))
		if replay {
			t.Fatalf("nonce %d: a replay", i)
		}
		evictedTotal += evicted
		if st.len() > maxNonces {
			t.Fatalf("after nonce %d the store holds %d, want at most %d", i, st.len(), maxNonces)
		}
	}
	if evictedTotal != maxNonces {
		t.Errorf("%d evicted, want %d", evictedTotal, maxNonces)
	}
	// The oldest half is forgotten, the newest half remembered.
	if replay, _ := st.add(peerOf(0), nonceOf(0), t0.Add(time.Hour/1000)); replay {
		t.Error("the least recently added nonce is still remembered")
	}
	last := 2*maxNonces - 1
	if replay, _ := st.add(peerOf(last%peers), nonceOf(last), t0.Add(time.Hour/1000)); !replay {
		t.Error("the most recently added nonce is forgotten")
	}

	// nonceTTL later everything has expired: nothing is evicted for room.
	later := t0.Add(nonceTTL + time.Hour)
	if replay, evicted := st.add(idA, nonceOf(1), later); replay || evicted != 0 {
		t.Errorf("after nonceTTL: replay %v, evicted %d; want a new nonce, none evicted", replay, evicted)
	}
	if st.len() != 1 || st.peerLen(idA) != 1 || len(st.peers) != 1 {
		t.Errorf("after nonceTTL the store holds %d nonces of %d peers, want 1 of 1", st.len(), len(st.peers))
	}
}
