package h2srv

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"os"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// pingThenCall sends its SETTINGS and, once they are acknowledged, in one
// write a PING and a request (stream 1), as a gRPC client's next call
// follows the PING it sent for the last response (grpc-go's BDP
// estimate); it returns the client, whose writes go out by flush.
func pingThenCall(t *testing.T, addr string) (*rawClient, func()) {
	c := rawConn(t, addr, nil)
	var out bytes.Buffer
	fr := http2.NewFramer(&out, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	rc := &rawClient{t: t, c: c, fr: fr}
	flush := func() {
		if _, err := c.Write(out.Bytes()); err != nil {
			t.Fatal(err)
		}
		out.Reset()
	}
	fr.WriteSettings()
	flush()
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		if sf, ok := f.(*http2.SettingsFrame); ok {
			if sf.IsAck() {
				break
			}
			fr.WriteSettingsAck()
		}
	}
	fr.WritePing(false, [8]byte{9})
	rc.headers(1, true)
	flush()
	return rc, flush
}

// TestPingAckWaitsForPendingResponse: a PING's acknowledgement read with
// a request waits for that request's response and leaves in its write,
// not in a write of its own after flushDelay (a gRPC client pings once
// per call: through a loaded agent, whose upstream took longer than
// flushDelay, a fifth of the calls cost that write and the timer's
// goroutine; issue 14). The bound for that wait is an hour here.
func TestPingAckWaitsForPendingResponse(t *testing.T) {
	old := openFlushDelay.Swap(int64(time.Hour))
	defer openFlushDelay.Store(old)
	release := make(chan struct{})
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
		w.Write([]byte("ok"))
	})}
	addr := serve(t, s)
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	rc, flush := pingThenCall(t, addr)
	// Ten times flushDelay: the acknowledgement would have left by then.
	rc.c.SetReadDeadline(time.Now().Add(10 * time.Duration(flushDelay.Load())))
	for {
		f, err := rc.fr.ReadFrame()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if sf, ok := f.(*http2.SettingsFrame); ok && !sf.IsAck() {
			rc.fr.WriteSettingsAck()
			flush()
		}
		if p, ok := f.(*http2.PingFrame); ok && p.IsAck() {
			t.Fatal("the PING was acknowledged before the open stream's response, in a write of its own")
		}
	}
	close(release)
	rc.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var acked, ended bool
	for !acked || !ended {
		switch f := rc.next().(type) {
		case *http2.PingFrame:
			acked = acked || f.IsAck() && f.Data == [8]byte{9}
		case *http2.DataFrame:
			ended = ended || f.StreamEnded()
			if ended && !acked {
				t.Fatal("the response came before the PING's acknowledgement")
			}
		}
	}
}

// TestPingAckBoundedWhileStreamOpen: with a stream open whose response
// does not come (a long stream, idle), the acknowledgement still leaves,
// after openFlushDelay: a client's keepalive PING is answered.
func TestPingAckBoundedWhileStreamOpen(t *testing.T) {
	old := openFlushDelay.Swap(int64(5 * time.Millisecond))
	defer openFlushDelay.Store(old)
	release := make(chan struct{})
	defer close(release)
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-release })}
	addr := serve(t, s)
	rc, _ := pingThenCall(t, addr)
	for {
		if p, ok := rc.next().(*http2.PingFrame); ok && p.IsAck() && p.Data == [8]byte{9} {
			return
		}
	}
}

// TestPingAckWithinOpenFlushDelay: while streams are open whose handlers
// never respond, every PING is acknowledged within openFlushDelay as set
// (10 ms) and some slack for a loaded machine: a PING read alone, or with
// the request of another such stream, as a gRPC client sends them. A held
// acknowledgement left unsent (a timer not armed, or stopped by a flush
// that did not take it along) fails at the read's deadline.
func TestPingAckWithinOpenFlushDelay(t *testing.T) {
	const slack = 250 * time.Millisecond
	bound := time.Duration(openFlushDelay.Load())
	release := make(chan struct{})
	defer close(release)
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-release })}
	addr := serve(t, s)
	rc, flush := pingThenCall(t, addr)
	// acked waits for the acknowledgement of the PING carrying data, sent
	// at sent.
	acked := func(data [8]byte, sent time.Time, what string) {
		t.Helper()
		rc.c.SetReadDeadline(sent.Add(bound + slack))
		for {
			f, err := rc.fr.ReadFrame()
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("%s: no acknowledgement within %v (openFlushDelay %v and %v of slack)", what, bound+slack, bound, slack)
			}
			if err != nil {
				t.Fatal(err)
			}
			if sf, ok := f.(*http2.SettingsFrame); ok && !sf.IsAck() {
				rc.fr.WriteSettingsAck()
				flush()
			}
			if p, ok := f.(*http2.PingFrame); ok && p.IsAck() && p.Data == data {
				return
			}
		}
	}
	acked([8]byte{9}, time.Now(), "the PING sent with the first request")
	for i := range 20 {
		data := [8]byte{byte(i), 1}
		rc.fr.WritePing(false, data)
		what := fmt.Sprintf("PING %d, alone", i)
		if i%2 == 1 {
			rc.headers(uint32(3+2*i), true) // another stream whose response does not come
			what = fmt.Sprintf("PING %d, with a request", i)
		}
		sent := time.Now()
		flush()
		acked(data, sent, what)
	}
}
