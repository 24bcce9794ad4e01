package agent

import (
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/retry"
)

// TestReplayBody: a retry sends the body again from its start while it
// fits the buffer; a body longer than the buffer is not replayable; an
// attempt taken over by the next one reads no more.
func TestReplayBody(t *testing.T) {
	rb := newReplayBody(strings.NewReader("hello world"), 16)
	r1 := rb.attempt()
	b := make([]byte, 5)
	if n, err := io.ReadFull(r1, b); n != 5 || err != nil || string(b) != "hello" {
		t.Fatalf("first attempt read %q %v", b[:n], err)
	}
	r2 := rb.attempt() // the first attempt failed after 5 bytes
	if _, err := r1.Read(b); !errors.Is(err, errBodyGone) {
		t.Fatalf("taken-over attempt read: %v, want errBodyGone", err)
	}
	if got, err := io.ReadAll(r2); string(got) != "hello world" || err != nil {
		t.Fatalf("retry read %q %v", got, err)
	}
	if !rb.replayable() {
		t.Fatal("an 11-byte body should be replayable with a 16-byte buffer")
	}
	if got, _ := io.ReadAll(rb.attempt()); string(got) != "hello world" {
		t.Fatalf("third attempt read %q", got)
	}

	long := newReplayBody(strings.NewReader(strings.Repeat("x", 40)), 16)
	if got, _ := io.ReadAll(long.attempt()); len(got) != 40 {
		t.Fatalf("the only attempt of a long body read %d bytes, want 40", len(got))
	}
	if long.replayable() {
		t.Fatal("a 40-byte body is not replayable with a 16-byte buffer")
	}
	if _, err := long.attempt().Read(b); !errors.Is(err, errBodyGone) {
		t.Fatalf("a retry of a long body read: %v, want errBodyGone", err)
	}
}

// TestReplayBodyReadInFlight: an attempt blocked reading the client's
// body is taken over; the bytes it was waiting for go to the next attempt.
func TestReplayBodyReadInFlight(t *testing.T) {
	pr, pw := io.Pipe()
	rb := newReplayBody(pr, 64)
	r1 := rb.attempt()
	first := make(chan error, 1)
	go func() {
		_, err := r1.Read(make([]byte, 8))
		first <- err
	}()
	// Wait until the first attempt is inside the pipe's Read.
	deadline := time.Now().Add(5 * time.Second)
	for {
		rb.mu.Lock()
		reading := rb.reading
		rb.mu.Unlock()
		if reading {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the first attempt never read")
		}
		time.Sleep(time.Millisecond)
	}
	r2 := rb.attempt()
	second := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(r2)
		second <- string(b)
	}()
	io.WriteString(pw, "abc")
	if err := <-first; !errors.Is(err, errBodyGone) {
		t.Fatalf("taken-over attempt: %v, want errBodyGone", err)
	}
	io.WriteString(pw, "def")
	pw.Close()
	if got := <-second; got != "abcdef" {
		t.Fatalf("second attempt read %q, want abcdef", got)
	}
}

// TestRetryPolicyOf: a fogmesh document's policy as the retry package
// applies it.
func TestRetryPolicyOf(t *testing.T) {
	noResponse := retry.OnConnectFailure | retry.OnRefusedStream | retry.OnReset
	for _, c := range []struct {
		in      api.RetryPolicy
		retries int
		conds   retry.Cond
		codes   []int
		any     bool
	}{
		{api.RetryPolicy{}, 2, noResponse, nil, false},
		{api.RetryPolicy{Attempts: -1}, 0, noResponse, nil, false},
		{api.RetryPolicy{Attempts: 4, On5xx: true}, 4, noResponse | retry.OnGatewayError, nil, false},
		{api.RetryPolicy{On: "5xx", Methods: api.RetryMethodsAny}, 2, retry.On5xx, nil, true},
		{api.RetryPolicy{On: api.IstioDefaultRetryOn, Methods: api.RetryMethodsAny}, 2,
			retry.OnConnectFailure | retry.OnRefusedStream | retry.OnGRPCUnavailable | retry.OnGRPCCancelled | retry.OnRetriableStatusCodes, []int{503}, true},
	} {
		p := retryPolicyOf(c.in)
		if p.Retries != c.retries || p.On.Conds != c.conds || !slices.Equal(p.On.Codes, c.codes) || p.AnyMethod != c.any {
			t.Errorf("%+v: got %+v", c.in, p)
		}
	}
}

// TestKeepResponseStalls: a retriable 503 whose body stalls after its
// header is given up after the wait (its body closed), so the retry
// starts; one whose body arrives is kept (reviewer's regression:
// keepResponse waited for the body with no bound but the request
// timeout, none under Istio's default).
func TestKeepResponseStalls(t *testing.T) {
	pr, pw := io.Pipe()
	defer pw.Close()
	body := &closeFlag{ReadCloser: pr}
	resp := &http.Response{StatusCode: 503, ContentLength: 20, Body: body, Header: http.Header{}}
	done := make(chan *http.Response, 1)
	go func() { done <- keepResponse(resp, 50*time.Millisecond, nil) }()
	select {
	case kept := <-done:
		if kept != nil {
			t.Error("a response whose body never arrived was kept")
		}
	case <-time.After(10 * time.Second):
		pr.CloseWithError(io.ErrClosedPipe)
		t.Fatal("keepResponse still blocked on a stalled 503 body: the retry waits for it")
	}
	waitFor(t, "the stalled body to be closed", body.closed.Load)
	full := "upstream says no\n"
	kept := keepResponse(&http.Response{StatusCode: 503, ContentLength: int64(len(full)), Body: io.NopCloser(strings.NewReader(full))}, time.Minute, nil)
	if kept == nil {
		t.Fatal("a complete body was not kept")
	}
	if b, _ := io.ReadAll(kept.Body); string(b) != full {
		t.Errorf("kept body %q, want %q", b, full)
	}
}

// closeFlag records that its body was closed.
type closeFlag struct {
	io.ReadCloser
	closed atomic.Bool
}

func (c *closeFlag) Close() error { c.closed.Store(true); return c.ReadCloser.Close() }
