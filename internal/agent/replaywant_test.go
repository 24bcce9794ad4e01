package agent

import (
	"bytes"
	"io"
	"testing"
)

// TestReplayBodyWant: a body of declared length (want) is kept in one
// buffer of that size, grown once past the small array, and replays whole;
// without want, buf grows as append grows it and replays the same.
func TestReplayBodyWant(t *testing.T) {
	body := bytes.Repeat([]byte("0123456789abcdef"), 40<<10/16)
	for _, want := range []int{0, len(body)} {
		rb := newReplayBody(bytes.NewReader(body), 64<<10)
		rb.want = want
		r, grows := rb.attempt(), 0
		p := make([]byte, 8<<10)
		last := cap(rb.buf)
		for {
			n, err := r.Read(p)
			if n > 0 && cap(rb.buf) != last {
				grows, last = grows+1, cap(rb.buf)
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		if want > 0 && (grows != 1 || cap(rb.buf) != want) {
			t.Fatalf("want %d: buf grew %d times to cap %d, want once to %d", want, grows, cap(rb.buf), want)
		}
		if want == 0 && grows < 2 {
			t.Fatalf("without want buf grew %d times: the test reads too little to tell", grows)
		}
		if got, err := io.ReadAll(rb.attempt()); err != nil || !bytes.Equal(got, body) {
			t.Fatalf("want %d: the retry read %d bytes (%v), want the %d sent", want, len(got), err, len(body))
		}
	}
}
