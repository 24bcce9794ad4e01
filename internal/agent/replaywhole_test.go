package agent

import (
	"bytes"
	"io"
	"testing"
)

// TestReplayBodyWantOneRead: a body of declared length read in one Read
// (an upload all in the client's socket, its read as large as the body)
// is kept in a pooled buffer as one read in parts is, not one append
// allocates for it; it replays whole and its buffer goes back (release).
func TestReplayBodyWantOneRead(t *testing.T) {
	for _, size := range []int{4 << 10, replaySmallSize, 48 << 10} {
		body := bytes.Repeat([]byte{'x'}, size)
		rb := newReplayBody(bytes.NewReader(body), retryBodyLimit)
		rb.want = size
		r := rb.attempt()
		p := make([]byte, 64<<10)
		if n, err := r.Read(p); n != size || err != nil {
			t.Fatalf("%d bytes: read %d, %v", size, n, err)
		}
		if !rb.pooled {
			t.Errorf("%d bytes read in one read: kept in a buffer of cap %d, not a pooled one", size, cap(rb.buf))
		}
		if got, err := io.ReadAll(rb.attempt()); err != nil || !bytes.Equal(got, body) {
			t.Fatalf("%d bytes: the retry read %d (%v)", size, len(got), err)
		}
	}
}
