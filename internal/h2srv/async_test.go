package h2srv

import (
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// detaching is a server whose handler detaches its stream (through a
// wrapper, as the agent's writers) and hands the Async to the test.
func detaching(t *testing.T, after func(w http.ResponseWriter)) (string, chan *Async) {
	ch := make(chan *Async, 4)
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a := Detach(wrapped{w})
		if a == nil {
			t.Error("Detach: nil for the server's writer")
			return
		}
		if Detach(w) != nil {
			t.Error("Detach: a second Async for one stream")
		}
		ch <- a
		if after != nil {
			after(w)
		}
	})}
	return serve(t, s), ch
}

type wrapped struct{ http.ResponseWriter }

func (w wrapped) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func recvAsync(t *testing.T, ch chan *Async) *Async {
	t.Helper()
	select {
	case a := <-ch:
		return a
	case <-time.After(10 * time.Second):
		t.Fatal("no request reached the handler")
		return nil
	}
}

// TestDetachFinish: a detached stream's response (header, body, declared
// and prefixed trailers) is written and ended from another goroutine,
// after the handler returned; a writer not the server's is not detached.
func TestDetachFinish(t *testing.T) {
	if Detach(httptestWriter{}) != nil {
		t.Fatal("Detach of a foreign writer")
	}
	addr, ch := detaching(t, nil)
	c, _ := h2cClient(t)
	done := make(chan error, 1)
	go func() {
		resp, err := c.Get("http://" + addr + "/")
		if err != nil {
			done <- err
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err == nil && (string(b) != "hello" || resp.StatusCode != 201 || resp.Trailer.Get("X-Sum") != "5" || resp.Trailer.Get("X-Late") != "1") {
			err = errors.New("got " + resp.Status + " " + string(b) + " trailers " + strings.Join(resp.Trailer.Values("X-Sum"), ","))
		}
		done <- err
	}()
	a := recvAsync(t, ch)
	w := a.ResponseWriter()
	w.Header().Set("Trailer", "X-Sum")
	w.WriteHeader(201)
	io.WriteString(w, "hello")
	w.Header().Set("X-Sum", "5")
	w.Header().Set(http.TrailerPrefix+"X-Late", "1")
	a.Finish()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

type httptestWriter struct{ http.ResponseWriter }

// TestDetachTryFinish: TryFinish ends a short response without waiting,
// the Flusher it returns flushes it; a response whose body went out in
// part already is left to Finish.
func TestDetachTryFinish(t *testing.T) {
	addr, ch := detaching(t, nil)
	c, _ := h2cClient(t)
	get := func() chan string {
		out := make(chan string, 1)
		go func() {
			resp, err := c.Get("http://" + addr + "/")
			if err != nil {
				out <- err.Error()
				return
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				out <- err.Error()
				return
			}
			out <- string(b)
		}()
		return out
	}
	out := get()
	a := recvAsync(t, ch)
	io.WriteString(a.ResponseWriter(), "short")
	f, ok := a.TryFinish()
	if !ok {
		t.Fatal("TryFinish of a short response: false")
	}
	f.FlushPending()
	if got := <-out; got != "short" {
		t.Fatalf("got %q", got)
	}

	// A body past h2srv's buffer (sent in part as it was written):
	// TryFinish declines, Finish ends it.
	out = get()
	a = recvAsync(t, ch)
	big := strings.Repeat("x", 70000)
	io.WriteString(a.ResponseWriter(), big)
	if _, ok := a.TryFinish(); ok {
		t.Fatal("TryFinish after the body was flushed in part: true")
	}
	go a.Finish()
	if got := <-out; got != big {
		t.Fatalf("got %d bytes, want %d", len(got), len(big))
	}
}

// TestDetachPanic: a handler that panics after Detach has its stream
// reset; a Finish after that writes nothing and does not fail. Abort
// resets a stream from the finisher's side.
func TestDetachPanic(t *testing.T) {
	addr, ch := detaching(t, func(w http.ResponseWriter) {
		if w.Header().Get("X-Never") == "" {
			panic("handler bug")
		}
	})
	c, _ := h2cClient(t)
	errc := make(chan error, 1)
	go func() {
		resp, err := c.Get("http://" + addr + "/")
		if err == nil {
			_, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		errc <- err
	}()
	a := recvAsync(t, ch)
	var se http2.StreamError
	if err := <-errc; !errors.As(err, &se) || se.Code != http2.ErrCodeInternal {
		t.Fatalf("got %v, want a stream reset with INTERNAL_ERROR", err)
	}
	io.WriteString(a.ResponseWriter(), "late")
	a.Finish() // nothing written: the stream is gone

	// Abort.
	addr, ch = detaching(t, nil)
	go func() {
		resp, err := c.Get("http://" + addr + "/")
		if err == nil {
			_, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		errc <- err
	}()
	recvAsync(t, ch).Abort()
	if err := <-errc; !errors.As(err, &se) || se.Code != http2.ErrCodeInternal {
		t.Fatalf("Abort: got %v, want a stream reset with INTERNAL_ERROR", err)
	}
}

// TestDetachTryFinishShortWindow: with the client's stream window at 10
// bytes, TryFinish declines a 100-byte body (nothing written); Finish
// sends 10 bytes and the rest after the client's WINDOW_UPDATE.
func TestDetachTryFinishShortWindow(t *testing.T) {
	addr, ch := detaching(t, nil)
	rc := newRawClient(t, addr, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 10})
	rc.headers(1, true)
	a := recvAsync(t, ch)
	io.WriteString(a.ResponseWriter(), strings.Repeat("b", 100))
	if _, ok := a.TryFinish(); ok {
		t.Fatal("TryFinish past the client's window: true")
	}
	go a.Finish()
	if s := status(rc.next()); s != "200" {
		t.Fatalf("first frame: %s", s)
	}
	got := 0
	for got < 100 {
		d, ok := rc.next().(*http2.DataFrame)
		if !ok {
			t.Fatalf("want DATA, got %T", d)
		}
		got += len(d.Data())
		if got > 10 && got-len(d.Data()) < 10 {
			t.Fatalf("DATA past the stream window: %d bytes", got)
		}
		if got == 10 {
			rc.fr.WriteWindowUpdate(1, 90)
		}
		if d.StreamEnded() != (got == 100) {
			t.Fatalf("END_STREAM at %d bytes", got)
		}
	}
}

// TestTryFinishClientNotReading: a client that reads nothing (a small
// receive buffer, the largest windows) fills its socket; TryFinish and
// FlushPending, which a proxy's upstream read loop calls, never wait on
// it: once the socket holds bytes the client has not taken, TryFinish
// declines (Finish, on a goroutine, waits instead) and FlushPending hands
// its write to a goroutine.
func TestTryFinishClientNotReading(t *testing.T) {
	addr, ch := detaching(t, nil)
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.Write([]byte(http2.ClientPreface))
	fr := http2.NewFramer(c, c)
	fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1<<31 - 1})
	fr.WriteWindowUpdate(0, 1<<31-1-65535)
	rc := &rawClient{t: t, c: c, fr: fr}
	body := strings.Repeat("x", 8<<10)
	done := make(chan int, 1)
	go func() {
		declined := 0
		for id := uint32(1); id < 2*1000 && declined == 0; id += 2 { // 8 MB: past any send buffer

			rc.headers(id, true)
			a := recvAsync(t, ch)
			io.WriteString(a.ResponseWriter(), body)
			if f, ok := a.TryFinish(); ok {
				f.FlushPending()
			} else {
				declined++
				go a.Finish()
			}
		}
		done <- declined
	}()
	select {
	case n := <-done:
		if n == 0 {
			t.Fatal("1,000 responses of 8 KiB to a client that reads nothing: TryFinish never declined")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("TryFinish or FlushPending waited on a client that reads nothing")
	}
}
