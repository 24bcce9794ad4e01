package httpproxy

import (
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// TestPoolRoundTripAtClock: RoundTripAt's end reading is taken once the
// response head came (after the endpoint sent it, before the call
// returned); the caller's reading is the reused connection's use time;
// a body that was in the buffer with the head leaves the connection idle
// as of that reading, one that came later as of its end.
func TestPoolRoundTripAtClock(t *testing.T) {
	got, release := make(chan struct{}), make(chan struct{})
	u := startUpstream(t, func(c net.Conn, req *http.Request) bool {
		got <- struct{}{}
		<-release
		if req.URL.Path == "/split" { // the body in a write of its own, later
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nsp")
			<-release
			io.WriteString(c, "it")
			return true
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		return true
	})
	p := u.pool(PoolConfig{})
	defer p.Close(true)
	type result struct {
		resp *http.Response
		at   time.Time
		err  error
	}
	exchange := func(path string, now time.Time) (mark time.Time, r result) {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://svc"+path, nil)
		done := make(chan result, 1)
		go func() {
			resp, at, err := p.RoundTripAt(req, now)
			done <- result{resp, at, err}
		}()
		<-got
		mark = MonoTime() // before the endpoint answers
		release <- struct{}{}
		r = <-done
		if r.err != nil {
			t.Fatal(r.err)
		}
		if after := MonoTime(); r.at.Before(mark) || r.at.After(after) {
			t.Fatalf("%s: end reading %v not between the answer (%v) and the return (%v)", path, r.at, mark, after)
		}
		return mark, r
	}
	readAll := func(r result) {
		t.Helper()
		if _, err := io.ReadAll(r.resp.Body); err != nil {
			t.Fatal(err)
		}
		r.resp.Body.Close()
	}
	idleAt := func() time.Time {
		p.mu.Lock()
		defer p.mu.Unlock()
		if len(p.idle) != 1 {
			t.Fatalf("%d idle connections, want 1", len(p.idle))
		}
		return p.idle[0].idleAt
	}

	_, r := exchange("/ok", time.Time{}) // a new connection: the caller's reading is not needed
	readAll(r)
	if at := idleAt(); !at.Equal(r.at) {
		t.Fatalf("a body in the buffer with its head: idle as of %v, want the head's reading %v", at, r.at)
	}

	now := MonoTime()
	_, r = exchange("/ok", now)
	pc := r.resp.Body.(*respBody).pc
	if !pc.usedAt.Equal(now) {
		t.Fatalf("reused connection used as of %v, want the caller's reading %v", pc.usedAt, now)
	}
	readAll(r)

	_, r = exchange("/split", MonoTime())
	rest := MonoTime()
	release <- struct{}{} // the rest of the body
	readAll(r)
	if at := idleAt(); !at.After(rest) {
		t.Fatalf("a body that came after its head: idle as of %v, not after its end came (%v)", at, rest)
	}
}
