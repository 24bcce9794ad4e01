package agent

import (
	"bytes"
	"io"
	"testing"
)

// TestReplayBodyWant: a body of declared length (want) is kept in one
// buffer of that size or more (a pooled one), grown once past the small
// array, and replays whole;
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
		if want > 0 && (grows != 1 || cap(rb.buf) < want) {
			t.Fatalf("want %d: buf grew %d times to cap %d, want once to %d or more", want, grows, cap(rb.buf), want)
		}
		if want == 0 && grows < 2 {
			t.Fatalf("without want buf grew %d times: the test reads too little to tell", grows)
		}
		if got, err := io.ReadAll(rb.attempt()); err != nil || !bytes.Equal(got, body) {
			t.Fatalf("want %d: the retry read %d bytes (%v), want the %d sent", want, len(got), err, len(body))
		}
	}
}

// TestReplayBodyRelease: release pools the buffer of a body read to its
// end by its current attempt, whose next Read still returns io.EOF; it
// keeps the buffer while the body is not read to its end, or while the
// current attempt (a retry) has not read all of it, which then reads it
// whole.
func TestReplayBodyRelease(t *testing.T) {
	body := bytes.Repeat([]byte("0123456789abcdef"), 40<<10/16)
	newRB := func() *replayBody {
		rb := newReplayBody(bytes.NewReader(body), retryBodyLimit)
		rb.want = len(body)
		return rb
	}

	rb := newRB()
	r := rb.attempt()
	if got, err := io.ReadAll(r); err != nil || !bytes.Equal(got, body) {
		t.Fatalf("read %d bytes (%v)", len(got), err)
	}
	rb.release()
	if rb.buf != nil {
		t.Fatal("a body read to its end by its only attempt: buffer kept")
	}
	if n, err := r.Read(make([]byte, 10)); n != 0 || err != io.EOF {
		t.Fatalf("a read after release: %d, %v; want 0, io.EOF", n, err)
	}

	rb = newRB()
	r = rb.attempt()
	if _, err := io.ReadFull(r, make([]byte, 20<<10)); err != nil {
		t.Fatal(err)
	}
	rb.release()
	if rb.buf == nil {
		t.Fatal("a body not read to its end: buffer released")
	}

	rb = newRB()
	if _, err := io.ReadAll(rb.attempt()); err != nil {
		t.Fatal(err)
	}
	retry := rb.attempt()
	head := make([]byte, 1<<10)
	if _, err := io.ReadFull(retry, head); err != nil {
		t.Fatal(err)
	}
	rb.release()
	if rb.buf == nil {
		t.Fatal("a retry that has not read all of the body: buffer released")
	}
	rest, err := io.ReadAll(retry)
	if err != nil || !bytes.Equal(append(head, rest...), body) {
		t.Fatalf("the retry read %d bytes (%v), want the %d sent", len(head)+len(rest), err, len(body))
	}

	small := body[:10<<10] // the smaller pool's
	rb = newReplayBody(bytes.NewReader(small), retryBodyLimit)
	rb.want = len(small)
	r = rb.attempt()
	if got, err := io.ReadAll(r); err != nil || !bytes.Equal(got, small) || cap(rb.buf) != replaySmallSize {
		t.Fatalf("read %d bytes (%v) into a buffer of %d", len(got), err, cap(rb.buf))
	}
	rb.release()
	if rb.buf != nil {
		t.Fatal("a 10 KiB body read to its end: buffer kept")
	}
}
