package agent

import (
	"runtime"
	"testing"
	"time"
)

// TestHeadWatchStopRacesCallback: the lock-free head watch (e14babd) with
// its timer's callback run beside the head's coming (stopHead), at varied
// points of it, many times. A slow head's watch that begins as the head
// comes is stopped by stopHead or never begins: the callback returns
// (stopHead's deadline ends the watch's read; one that stopHead missed
// would read the silent client for good). A prompt head's callback sets
// no watch and no deadline: the serving loop's next read of the client
// gets the byte the client sends.
func TestHeadWatchStopRacesCallback(t *testing.T) {
	cs, timer, client, ctx, clock := watchedConnClock(t)
	for i := 0; i < 3000; i++ {
		slow := i%3 != 0
		cs.conn.SetReadDeadline(time.Time{}) // as the serving loop's read of a head sets its own
		cs.watchHead()
		if slow {
			clock.add(headWatchAfter)
		} else {
			clock.add(headWatchAfter / 2)
		}
		timer.fire()
		cb := make(chan struct{})
		go func() { defer close(cb); cs.headWatch() }()
		for j := 0; j < i%4; j++ {
			runtime.Gosched()
		}
		cs.stopHead()
		select {
		case <-cb:
		case <-time.After(10 * time.Second):
			t.Fatalf("iteration %d (slow %v): the callback still runs 10 s after stopHead (a watch it missed reads the client)", i, slow)
		}
		if cs.watching() || cs.headWatching.Load() {
			t.Fatalf("iteration %d: a watch is left after stopHead and its callback", i)
		}
		if !slow {
			go client.Write([]byte{'x'})
			cs.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			if b, err := cs.br.ReadByte(); err != nil || b != 'x' {
				t.Fatalf("iteration %d: a prompt head's next read: %q, %v (a stray deadline?)", i, b, err)
			}
		}
	}
	if ctx.Err() != nil {
		t.Fatal("a stopped watch took the client for gone")
	}
}
