package httpproxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestTimedBody: a body whose bytes keep coming is read past the gap, one
// that stalls fails after the gap, and a trickle fails at the request
// timeout; every failure is ErrBodyTimeout, and stop lifts the bounds.
func TestTimedBody(t *testing.T) {
	const gap = 200 * time.Millisecond
	open := func(t *testing.T) (*TimedBody, net.Conn) {
		server, client := net.Pipe()
		t.Cleanup(func() { server.Close(); client.Close() })
		return NewTimedBody(io.NopCloser(server), server.SetReadDeadline), client
	}
	trickle := func(c net.Conn, every time.Duration, stop <-chan struct{}) {
		for {
			select {
			case <-stop:
				return
			case <-time.After(every): // the client's pace under test
			}
			if _, err := c.Write([]byte("x")); err != nil {
				return
			}
		}
	}
	readUntilErr := func(b *TimedBody) (int, error) {
		n := 0
		buf := make([]byte, 16)
		for {
			m, err := b.Read(buf)
			n += m
			if err != nil {
				return n, err
			}
		}
	}
	t.Run("stall", func(t *testing.T) {
		b, c := open(t)
		b.Arm(gap, 0)
		go c.Write([]byte("abc"))
		start := time.Now()
		n, err := readUntilErr(b)
		if took := time.Since(start); n != 3 || !errors.Is(err, ErrBodyTimeout) || took < gap*15/16 {
			t.Fatalf("read %d bytes, then %v after %v; want 3, ErrBodyTimeout after about %v", n, err, took, gap)
		}
		if !b.TimedOut() {
			t.Fatal("not marked timed out")
		}
		if _, err := b.Read(make([]byte, 1)); !errors.Is(err, ErrBodyTimeout) {
			t.Fatalf("a read after the timeout: %v; want ErrBodyTimeout at once", err)
		}
	})
	t.Run("trickle under the request timeout", func(t *testing.T) {
		b, c := open(t)
		b.Arm(gap, 3*gap)
		done := make(chan struct{})
		defer close(done)
		go trickle(c, gap/10, done)
		start := time.Now()
		n, err := readUntilErr(b)
		if took := time.Since(start); !errors.Is(err, ErrBodyTimeout) || took < 3*gap*15/16 || n == 0 {
			t.Fatalf("a trickle: %d bytes, then %v after %v; want ErrBodyTimeout at the request timeout %v", n, err, took, 3*gap)
		}
	})
	t.Run("stop lifts the bounds", func(t *testing.T) {
		b, c := open(t)
		b.Arm(gap, gap)
		go c.Write([]byte("a"))
		if _, err := b.Read(make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		b.Stop()
		got := make(chan error, 1)
		go func() { _, err := b.Read(make([]byte, 1)); got <- err }()
		select {
		case err := <-got:
			t.Fatalf("a read after stop ended with %v", err)
		case <-time.After(3 * gap): // longer than both bounds: the read must still be waiting
		}
		c.Write([]byte("b"))
		if err := <-got; err != nil {
			t.Fatal(err)
		}
	})
}

// TestTimedBodyOf finds the TimedBody of a request where the entry points
// put it: the body itself, behind ClientBody, or in the context.
func TestTimedBodyOf(t *testing.T) {
	tb := NewTimedBody(io.NopCloser(strings.NewReader("x")), func(time.Time) error { return nil })
	req, _ := http.NewRequest("POST", "http://svc/", strings.NewReader("x"))
	if TimedBodyOf(req) != nil {
		t.Fatal("a plain body has no TimedBody")
	}
	for name, r := range map[string]*http.Request{
		"body":        func() *http.Request { r := req.Clone(context.Background()); r.Body = tb; return r }(),
		"client body": func() *http.Request { r := req.Clone(context.Background()); r.Body = ClientBody{R: tb}; return r }(),
		"context":     req.WithContext(WithTimedBody(context.Background(), tb)),
	} {
		if TimedBodyOf(r) != tb {
			t.Errorf("%s: TimedBody not found", name)
		}
	}
	if ArmBody(req.WithContext(WithTimedBody(context.Background(), tb)), time.Second, 0) != tb {
		t.Error("ArmBody did not return the request's TimedBody")
	}
	if BodyTimedOut(req) {
		t.Error("a request without a TimedBody timed out")
	}
}
