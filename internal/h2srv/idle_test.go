package h2srv

import (
	"errors"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// TestIdleTimeoutFromLastStream: the idle timer sends no GOAWAY while a
// stream is open past the timeout, and counts the timeout from the end of
// the last stream.
func TestIdleTimeoutFromLastStream(t *testing.T) {
	const idle = 200 * time.Millisecond
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	release := make(chan struct{})
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			<-release
		}
		w.WriteHeader(204)
	})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err == nil {
			s.ServeConn(c, ConnOptions{IdleTimeout: idle})
		}
	}()
	rc := newRawClient(t, ln.Addr().String())
	rc.headers(1, true) // a first stream ends: the timer is set
	if s := status(rc.next()); s != "204" {
		t.Fatalf("got %s", s)
	}
	rc.headers(3, true, ":path", "/hold")
	// The stream stays open past three timeouts: no GOAWAY meanwhile.
	rc.c.SetReadDeadline(time.Now().Add(3 * idle))
	if f, err := rc.fr.ReadFrame(); err == nil {
		t.Fatalf("%v while a stream was open", f)
	} else if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal(err)
	}
	rc.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	close(release)
	if s := status(rc.next()); s != "204" {
		t.Fatalf("got %s", s)
	}
	ended := time.Now()
	for {
		f := rc.next()
		if g, ok := f.(*http2.GoAwayFrame); ok {
			if g.ErrCode != http2.ErrCodeNo || g.LastStreamID != 3 {
				t.Fatalf("GOAWAY %v last %d", g.ErrCode, g.LastStreamID)
			}
			if d := time.Since(ended); d < idle/2 {
				t.Fatalf("GOAWAY %v after the last stream ended, the idle timeout is %v", d, idle)
			}
			break
		}
	}
	rc.c.Close()
	<-done
}
