package h2up_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/fogmesh/fogmesh/internal/h2up"
)

type completed struct {
	resp     *http.Response
	err      error
	readLoop bool
	body     string
	trailer  string
}

// countFlusher counts its flushes.
type countFlusher struct{ n atomic.Int32 }

func (f *countFlusher) FlushPending() { f.n.Add(1) }

// startOnce sends a GET through a pool to a raw server running serve and
// returns what its completion got (its body read there).
func startOnce(t *testing.T, ctx context.Context, serve func(c net.Conn, fr *http2.Framer), fl *countFlusher) chan completed {
	t.Helper()
	addr := serveRawOnce(t, serve)
	p := h2up.New(h2up.Config{Dial: dialTo(addr)})
	t.Cleanup(p.Close)
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/", nil)
	out := make(chan completed, 2)
	err := p.Start(req, h2up.CompletionFunc(func(resp *http.Response, err error, rl *h2up.ReadLoop) {
		c := completed{resp: resp, err: err, readLoop: rl != nil}
		if rl != nil && fl != nil {
			rl.AtWait(fl)
			rl.AtWait(fl) // once, however often asked
		}
		if err == nil {
			b, rerr := io.ReadAll(resp.Body)
			c.body = string(b)
			if rerr != nil {
				c.err = rerr
			}
			c.trailer = resp.Trailer.Get("Grpc-Status")
			resp.Body.Close()
		}
		out <- c
	}))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func waitCompleted(t *testing.T, out chan completed) completed {
	t.Helper()
	select {
	case c := <-out:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("no completion")
		return completed{}
	}
}

// TestStartWholeResponse: a response whose header, body and trailers come
// together completes on the read loop, its body and trailers buffered; a
// flush asked for there is made once before the read loop waits.
func TestStartWholeResponse(t *testing.T) {
	fl := new(countFlusher)
	out := startOnce(t, context.Background(), func(c net.Conn, fr *http2.Framer) {
		h := firstHeaders(fr)
		if h == nil {
			return
		}
		// The three frames in one write, so that they come in one read
		// (a response whose end comes in a later read completes on a
		// goroutine: TestStartStreamingResponse).
		var whole bytes.Buffer
		wf := http2.NewFramer(&whole, nil)
		wf.WriteHeaders(http2.HeadersFrameParam{StreamID: h.StreamID, EndHeaders: true, BlockFragment: headerBlock(":status", "200", "content-type", "application/grpc")})
		wf.WriteData(h.StreamID, false, []byte("hello"))
		wf.WriteHeaders(http2.HeadersFrameParam{StreamID: h.StreamID, EndHeaders: true, EndStream: true, BlockFragment: headerBlock("grpc-status", "0")})
		c.Write(whole.Bytes())
		io.Copy(io.Discard, c)
	}, fl)
	c := waitCompleted(t, out)
	if c.err != nil || c.body != "hello" || c.trailer != "0" {
		t.Fatalf("got %+v", c)
	}
	if !c.readLoop {
		t.Fatal("completion of a whole response not on the read loop")
	}
	deadline := time.Now().Add(10 * time.Second)
	for fl.n.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if n := fl.n.Load(); n != 1 {
		t.Fatalf("flushed %d times, want 1", n)
	}
}

// TestStartStreamingResponse: a response whose body has not ended when
// the read loop would wait completes on a goroutine of its own, where its
// body's reads wait.
func TestStartStreamingResponse(t *testing.T) {
	release := make(chan struct{})
	out := startOnce(t, context.Background(), func(c net.Conn, fr *http2.Framer) {
		h := firstHeaders(fr)
		if h == nil {
			return
		}
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: h.StreamID, EndHeaders: true, BlockFragment: headerBlock(":status", "200")})
		fr.WriteData(h.StreamID, false, []byte("part1 "))
		<-release
		fr.WriteData(h.StreamID, true, []byte("part2"))
		io.Copy(io.Discard, c)
	}, nil)
	// The completion runs (and reads) before the rest is sent.
	time.AfterFunc(100*time.Millisecond, func() { close(release) })
	c := waitCompleted(t, out)
	if c.err != nil || c.body != "part1 part2" || c.readLoop {
		t.Fatalf("got %+v", c)
	}
}

// TestStartErrors: a stream the server resets, and a request whose
// context ends first, complete with the error, off the read loop.
func TestStartErrors(t *testing.T) {
	out := startOnce(t, context.Background(), func(c net.Conn, fr *http2.Framer) {
		h := firstHeaders(fr)
		if h == nil {
			return
		}
		fr.WriteRSTStream(h.StreamID, http2.ErrCodeInternal)
		io.Copy(io.Discard, c)
	}, nil)
	c := waitCompleted(t, out)
	var se *h2up.StreamError
	if !errors.As(c.err, &se) || se.Code != http2.ErrCodeInternal || c.readLoop {
		t.Fatalf("reset: got %+v", c)
	}

	ctx, cancel := context.WithCancel(context.Background())
	gotReset := make(chan http2.ErrCode, 1)
	out = startOnce(t, ctx, func(c net.Conn, fr *http2.Framer) {
		if firstHeaders(fr) == nil {
			return
		}
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			if r, ok := f.(*http2.RSTStreamFrame); ok {
				gotReset <- r.ErrCode
				return
			}
		}
	}, nil)
	cancel()
	c = waitCompleted(t, out)
	if !errors.Is(c.err, context.Canceled) || c.readLoop {
		t.Fatalf("cancel: got %+v", c)
	}
	select {
	case code := <-gotReset:
		if code != http2.ErrCodeCancel {
			t.Fatalf("server got RST_STREAM %v, want CANCEL", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no RST_STREAM for the cancelled request")
	}
}
