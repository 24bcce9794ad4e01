package agent

import (
	"sync"
	"testing"
)

// TestClientLimiterConnectionPlace: a fast-path connection's place
// (holdConn, acquireAt) and requests counted by address (acquire) share
// one client's cap, keyed by host, not port; another host has its own;
// and once every request is released and every connection dropped, in
// either order, the limiter keeps no entry.
func TestClientLimiterConnectionPlace(t *testing.T) {
	var l clientLimiter
	const limit = 3
	conn := l.holdConn("127.0.0.1:1000", limit)
	var holds []reqHold
	take := func(ok bool, what string) {
		t.Helper()
		var h reqHold
		if ok != l.acquireAt(conn, limit, &h) {
			t.Fatalf("%s: acquireAt = %v", what, !ok)
		}
		if ok {
			holds = append(holds, h)
		}
	}
	take(true, "1st on the connection")
	take(true, "2nd on the connection")
	var other reqHold
	if !l.acquire("127.0.0.1:2000", limit, &other) {
		t.Fatal("3rd, from another port of the same host: refused")
	}
	take(false, "4th on the connection (the host's cap)")
	if fourth := (reqHold{}); l.acquire("127.0.0.1:3000", limit, &fourth) {
		t.Fatal("4th, by address: served")
	}
	var h2 reqHold
	if !l.acquire("127.0.0.2:1000", limit, &h2) {
		t.Fatal("another host: refused")
	}
	h2.release()
	other.release()
	take(true, "after a release")
	for i := range holds {
		holds[i].release()
	}
	if len(l.n) != 1 {
		t.Fatalf("%d entries with one connection open; want 1", len(l.n))
	}
	l.dropConn(conn)
	if len(l.n) != 0 {
		t.Fatalf("%d entries left: %v", len(l.n), l.n)
	}
	// The connection gone before its last request's release.
	conn = l.holdConn("127.0.0.1:1000", limit)
	var h reqHold
	if !l.acquireAt(conn, limit, &h) {
		t.Fatal("refused")
	}
	l.dropConn(conn)
	if len(l.n) != 1 {
		t.Fatalf("%d entries with a request in flight; want 1", len(l.n))
	}
	h.release()
	if len(l.n) != 0 {
		t.Fatalf("%d entries left after the last release", len(l.n))
	}
	if l.holdConn("127.0.0.1:1000", 0) != nil || !l.acquireAt(nil, limit, &h) || len(l.n) != 0 {
		t.Fatal("no limit: a place was made or a request refused")
	}
}

// TestClientLimiterConcurrentReleaseAndDrop: connections and requests of
// one client that come and go at once leave no entry once all are done.
func TestClientLimiterConcurrentReleaseAndDrop(t *testing.T) {
	var l clientLimiter
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 500 {
				var h reqHold
				if g%2 == 0 {
					conn := l.holdConn("127.0.0.1:1", 1000)
					if l.acquireAt(conn, 1000, &h) {
						l.dropConn(conn)
						h.release()
					} else {
						l.dropConn(conn)
					}
				} else if l.acquire("127.0.0.1:2", 1000, &h) {
					h.release()
				}
			}
		}()
	}
	wg.Wait()
	if len(l.n) != 0 {
		t.Fatalf("%d entries left", len(l.n))
	}
}

// TestClientLimiterRefusalLeavesNoCount: a request refused at its cap
// leaves nothing in the count another admission reads, as under the
// limiter's lock before: one client's requests refused at a cap of one
// (one is in flight for good) while another admission, at a cap of two,
// takes and gives back the second place again and again must never find
// the place taken.
func TestClientLimiterRefusalLeavesNoCount(t *testing.T) {
	var l clientLimiter
	conn := l.holdConn("127.0.0.1:1000", 2)
	defer l.dropConn(conn)
	var held reqHold
	if !l.acquireAt(conn, 2, &held) {
		t.Fatal("first request refused")
	}
	defer held.release()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				var h reqHold
				if l.acquireAt(conn, 1, &h) || l.acquire("127.0.0.1:2000", 1, &h) {
					h.release()
					t.Error("a request over a cap of one with one in flight was served")
					return
				}
			}
		}()
	}
	refused := 0
	for range 20000 {
		var h reqHold
		if !l.acquireAt(conn, 2, &h) {
			refused++
			continue
		}
		h.release()
	}
	close(stop)
	wg.Wait()
	if refused > 0 {
		t.Fatalf("%d of 20000 requests refused with one of two places free", refused)
	}
}
