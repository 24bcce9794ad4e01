package h2srv

import (
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// serveSmallSend is serve with the accepted sockets' send buffer set
// small (SO_SNDBUF 4096): a client that reads nothing fills it at once.
func serveSmallSend(t *testing.T, s *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		s.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if rc, err := c.(*net.TCPConn).SyscallConn(); err == nil {
				rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, 4096) })
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.ServeConn(c, ConnOptions{})
			}()
		}
	}()
	return ln.Addr().String()
}

// TestTryFinishLargeHeaderClientNotReading: TryFinish, which a proxy's
// upstream read loop calls, never writes to the client's socket itself,
// whatever the size of the response's header (or trailers): a header
// larger than the connection's write buffer, to a client that reads
// nothing, made it wait in the socket's write for good (the buffer's room
// was checked against the body alone). It declines such a response
// (Finish, on a goroutine that may wait, ends it).
func TestTryFinishLargeHeaderClientNotReading(t *testing.T) {
	for _, trailer := range []bool{false, true} {
		ch := make(chan *Async, 1)
		addr := serveSmallSend(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ch <- Detach(w)
		})})
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
		rc.headers(1, true)
		a := recvAsync(t, ch)
		w := a.ResponseWriter()
		big := strings.Repeat("v", 8<<10)
		for i := range 64 { // 512 KiB: past the buffer and any socket's room
			k := "X-Big-" + string(rune('a'+i%26)) + string(rune('a'+i/26))
			if trailer {
				k = http.TrailerPrefix + k
			}
			w.Header().Set(k, big)
		}
		w.Write([]byte("ok"))
		done := make(chan bool, 1)
		go func() {
			_, ok := a.TryFinish()
			done <- ok
		}()
		select {
		case ok := <-done:
			if ok {
				t.Errorf("trailer %v: TryFinish took a 512 KiB header block", trailer)
			} else {
				go a.Finish()
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("trailer %v: TryFinish waited on a client that reads nothing (a 512 KiB header block)", trailer)
		}
		c.Close()
	}
}
