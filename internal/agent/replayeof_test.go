package agent

import (
	"io"
	"testing"
)

// eofWithData returns its bytes and io.EOF in one read.
type eofWithData struct{ b []byte }

func (r *eofWithData) Read(p []byte) (int, error) {
	n := copy(p, r.b)
	r.b = r.b[n:]
	if len(r.b) == 0 {
		return n, io.EOF
	}
	return n, nil
}

// TestReplayBodyKeepsEndWithData: a retried request's body passes a read
// of its last bytes with io.EOF on as it came (so h2up sends them with
// END_STREAM in one DATA frame), and a second attempt still replays the
// whole body.
func TestReplayBodyKeepsEndWithData(t *testing.T) {
	rb := newReplayBody(&eofWithData{[]byte("hello")}, 1<<10)
	buf := make([]byte, 16)
	n, err := rb.attempt().Read(buf)
	if n != 5 || err != io.EOF {
		t.Fatalf("first attempt's read: %d, %v; want 5 and io.EOF", n, err)
	}
	b, err := io.ReadAll(rb.attempt())
	if string(b) != "hello" || err != nil {
		t.Fatalf("second attempt: %q, %v", b, err)
	}
}
