package h2srv

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// TestRawReadStress: many short calls in flight on one connection, with
// request bodies of every size (frames cut anywhere by the client's
// writes) and the client's PINGs among them: every call is answered with
// its own body and every PING acknowledged, within the deadline (a lost
// wake-up is a call that hangs).
func TestRawReadStress(t *testing.T) {
	addr := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(w, r.Body)
	})})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := (&http2.Transport{AllowHTTP: true}).NewClientConn(c)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const workers, calls = 16, 40
	var wg sync.WaitGroup
	errs := make(chan error, workers+1)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 7))
			for i := range calls {
				body := bytes.Repeat([]byte{byte('a' + w)}, r.IntN(1+r.IntN(40<<10)))
				req, _ := http.NewRequestWithContext(ctx, "POST", "http://x/", bytes.NewReader(body))
				res, err := cc.RoundTrip(req)
				if err != nil {
					errs <- fmt.Errorf("worker %d call %d: %w", w, i, err)
					return
				}
				got, err := io.ReadAll(res.Body)
				res.Body.Close()
				if err != nil || !bytes.Equal(got, body) {
					errs <- fmt.Errorf("worker %d call %d: %d bytes back of %d (%v)", w, i, len(got), len(body), err)
					return
				}
			}
		}()
	}
	stop := make(chan struct{})
	pinged := make(chan int)
	go func() {
		n := 0
		defer func() { pinged <- n }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := cc.Ping(ctx); err != nil {
				errs <- fmt.Errorf("ping %d: %w", n, err)
				return
			}
			n++
		}
	}()
	wg.Wait()
	close(stop)
	n := <-pinged
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d calls, %d pings acknowledged", workers*calls, n)
}

// TestPeerVanishesMidStream: a client with streams open, their handlers
// reading request bodies, resets its connection: every body read gets an
// error and no goroutine is left behind.
func TestPeerVanishesMidStream(t *testing.T) {
	const streams = 20
	reading := make(chan struct{}, streams)
	bodyErrs := make(chan error, streams)
	addr := serve(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, 4)
		io.ReadFull(r.Body, buf)
		reading <- struct{}{}
		_, err := io.ReadAll(r.Body)
		bodyErrs <- err
	})})
	for _, reset := range []bool{true, false} {
		rc := newRawClient(t, addr)
		for i := range streams {
			id := uint32(1 + 2*i)
			rc.headers(id, false, ":method", "POST")
			rc.fr.WriteData(id, false, []byte("some"))
		}
		for range streams {
			select {
			case <-reading:
			case <-time.After(10 * time.Second):
				t.Fatal("the handlers did not all start reading")
			}
		}
		if reset {
			rc.c.(*net.TCPConn).SetLinger(0)
		}
		rc.c.Close()
		for i := range streams {
			select {
			case err := <-bodyErrs:
				if err == nil {
					t.Fatalf("reset %v: handler %d read the body of a stream left open to its end without an error", reset, i)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("reset %v: %d handlers still blocked in body reads 10s after the client vanished", reset, streams-i)
			}
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	for left := connGoroutines(); left != ""; left = connGoroutines() {
		if time.Now().After(deadline) {
			t.Fatalf("goroutines of the connections left 15s after they ended:\n%s", left)
		}
		time.Sleep(10 * time.Millisecond) // polling, bounded by the deadline
	}
}

// connGoroutines is the stacks of the goroutines in a connection's or a
// stream's code (idle handler workers, which wait workerIdle for the next
// stream, are not).
func connGoroutines() string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var left []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "h2srv.(*conn)") || strings.Contains(g, "h2srv.(*stream)") || strings.Contains(g, "h2srv.(*requestBody)") {
			left = append(left, g)
		}
	}
	return strings.Join(left, "\n\n")
}
