package agent

import (
	"io"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/httpproxy"
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

// readyReader is eofWithData that says whether a read would wait.
type readyReader struct {
	eofWithData
	ready bool
}

func (r *readyReader) ReadReady() bool { return r.ready }

func (r *readyReader) Close() error { return nil }

// TestBodyWrappersPassReadReady: the wrappers a forwarded request body
// goes through (TimedBody, noopCloseBody, then noCloseBody or a retry's
// replayReader) report whether a read would wait as the body does, so h2up
// sends a ready body (a unary gRPC call's) on the handler's goroutine; a
// replayReader with its outcome known is ready whatever the source.
func TestBodyWrappersPassReadReady(t *testing.T) {
	type rr interface{ ReadReady() bool }
	src := &readyReader{eofWithData: eofWithData{[]byte("hello")}}
	tb := httpproxy.NewTimedBody(src, func(time.Time) error { return nil })
	nc := &noopCloseBody{r: tb}
	rb := newReplayBody(nc, 1<<10)
	first := rb.attempt()
	for _, ready := range []bool{false, true} {
		src.ready = ready
		for name, b := range map[string]io.Reader{"TimedBody": tb, "noopCloseBody": nc, "noCloseBody": noCloseBody{nc}, "replayReader": first} {
			if got := b.(rr).ReadReady(); got != ready {
				t.Errorf("%s: ReadReady %v with the body's %v", name, got, ready)
			}
		}
	}
	if _, err := io.ReadAll(first); err != nil {
		t.Fatal(err)
	}
	src.ready = false
	if !rb.attempt().(rr).ReadReady() {
		t.Error("a retry's reader of a body read to its end is not ready")
	}
	nc.Close()
	if !nc.ReadReady() {
		t.Error("a closed noopCloseBody (its read fails at once) is not ready")
	}
}
