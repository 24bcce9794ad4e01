package httpproxy

import (
	"bytes"
	"io"
	"sync/atomic"
	"testing"
	"time"
)

// TestRawIOWriteReadAnswerNotLost: the answer to WriteRead's write is
// read however soon it comes (a peer that answers at once, many rounds:
// an answer between the write and the wait must not be lost) or late (a
// peer that answers after a pause: the read parks until it comes), and
// no round needs a read that finds the socket empty but a spurious wake's.
func TestRawIOWriteReadAnswerNotLost(t *testing.T) {
	for _, tc := range []struct {
		name   string
		rounds int
		delay  time.Duration
	}{
		{"instant", 3000, 0},
		{"late", 20, 5 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, peer := tcpPair(t)
			r := NewRawIO(c)
			go func() { // answers each 4-byte question with its reverse
				q := make([]byte, 4)
				for {
					if _, err := io.ReadFull(peer, q); err != nil {
						return
					}
					if tc.delay > 0 {
						time.Sleep(tc.delay) // the peer's pause, not the test's wait
					}
					peer.Write([]byte{q[3], q[2], q[1], q[0]})
				}
			}()
			var reads, empty atomic.Int64
			SetReadHookForTest(func(e bool) {
				reads.Add(1)
				if e {
					empty.Add(1)
				}
			})
			defer SetReadHookForTest(nil)
			// A lost answer parks the read for good: the deadline fails
			// the test instead of hanging it.
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			buf := make([]byte, 16)
			for i := range tc.rounds {
				q := []byte{'a', byte('0' + i%10), 'x', byte('0' + i%7)}
				wn, n, err := r.WriteRead(q, buf)
				if wn != len(q) || err != nil {
					t.Fatalf("round %d: wrote %d, read %v", i, wn, err)
				}
				if want := []byte{q[3], q[2], q[1], q[0]}; !bytes.Equal(buf[:n], want) {
					t.Fatalf("round %d: read %q, want %q", i, buf[:n], want)
				}
			}
			// Without the fusion each round reads at once after its write
			// and finds nothing (the peer has not answered): at least one
			// empty read per round. Fused, only a spurious wake does.
			if e, n := empty.Load(), reads.Load(); e >= int64(tc.rounds)/2 {
				t.Fatalf("%d of %d reads found the socket empty in %d rounds", e, n, tc.rounds)
			}
		})
	}
}

// TestRawIOWriteReadFallsBack: a write that does not go out whole (the
// peer reads nothing yet, the send buffer is small) is not waited on:
// WriteRead reports how much it wrote and reads nothing, and the rest
// written with Write (parking until the peer reads) then gets its answer.
func TestRawIOWriteReadFallsBack(t *testing.T) {
	c, peer := tcpPair(t)
	c.SetWriteBuffer(4 << 10)
	r := NewRawIO(c)
	big := bytes.Repeat([]byte("0123456789abcdef"), 4<<20/16)
	buf := make([]byte, 16)
	wn, n, err := r.WriteRead(big, buf)
	if wn >= len(big) || n != 0 || err != nil {
		t.Fatalf("WriteRead of %d bytes to a peer that reads nothing: wrote %d, read %d, %v", len(big), wn, n, err)
	}
	got := make(chan error, 1)
	go func() {
		if _, err := io.CopyN(io.Discard, peer, int64(len(big))); err != nil {
			got <- err
			return
		}
		_, err := peer.Write([]byte("done"))
		got <- err
	}()
	if m, err := r.Write(big[wn:]); m != len(big)-wn || err != nil {
		t.Fatal(m, err)
	}
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if n, err := r.Read(buf); err != nil || string(buf[:n]) != "done" {
		t.Fatalf("read %q %v", buf[:n], err)
	}
	if err := <-got; err != nil {
		t.Fatal(err)
	}

	// A read deadline already past: nothing is written, the caller's
	// Write sends all of it.
	c.SetReadDeadline(time.Unix(1, 0))
	if wn, n, err := r.WriteRead([]byte("late"), buf); wn != 0 || n != 0 || err != nil {
		t.Fatalf("WriteRead past the read deadline: wrote %d, read %d, %v", wn, n, err)
	}
}

// TestRawIOWriteReadEOF: a peer that closes in answer ends the read with
// io.EOF, as Read does.
func TestRawIOWriteReadEOF(t *testing.T) {
	c, peer := tcpPair(t)
	r := NewRawIO(c)
	go func() {
		b := make([]byte, 4)
		io.ReadFull(peer, b)
		peer.Close()
	}()
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if wn, _, err := r.WriteRead([]byte("bye!"), make([]byte, 8)); wn != 4 || err != io.EOF {
		t.Fatalf("wrote %d, read %v; want 4, EOF", wn, err)
	}
}
