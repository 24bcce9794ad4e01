package h2up_test

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/fogmesh/fogmesh/internal/h2up"
)

// TestReadLoopPanicRunsPendingCompletions: a panic on the read loop (a
// bug: here a completion's, run there) while another stream's completion
// waits for its response's end (its headers read, its body not) still
// runs that completion, on a goroutine of its own, whose body read fails
// with the connection's end; and the flushes completions asked for
// (AtWait) are made. It was never called: its caller (the agent's
// client) waited for good, and what the request held was never given
// back.
func TestReadLoopPanicRunsPendingCompletions(t *testing.T) {
	addr := serveRawOnce(t, func(c net.Conn, fr *http2.Framer) {
		var ids []uint32
		for len(ids) < 2 {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			if h, ok := f.(*http2.MetaHeadersFrame); ok {
				ids = append(ids, h.StreamID)
			}
		}
		var b bytes.Buffer // one write: both streams' frames in one read
		w := http2.NewFramer(&b, nil)
		w.WriteHeaders(http2.HeadersFrameParam{StreamID: ids[0], BlockFragment: headerBlock(":status", "200"), EndHeaders: true})
		w.WriteData(ids[0], false, []byte("part"))
		w.WriteHeaders(http2.HeadersFrameParam{StreamID: ids[1], BlockFragment: headerBlock(":status", "200"), EndHeaders: true, EndStream: true})
		c.Write(b.Bytes())
		io.Copy(io.Discard, c)
	})
	var panics atomic.Int32
	p := h2up.New(h2up.Config{Dial: dialTo(addr), OnPanic: func(any) { panics.Add(1) }})
	t.Cleanup(p.Close)
	fl := &countFlusher{}
	first := make(chan error, 1)
	req, _ := http.NewRequest("GET", "http://"+addr+"/a", nil)
	if err := p.Start(req, h2up.CompletionFunc(func(resp *http.Response, err error, rl *h2up.ReadLoop) {
		if err == nil {
			_, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		first <- err
	})); err != nil {
		t.Fatal(err)
	}
	req2, _ := http.NewRequest("GET", "http://"+addr+"/b", nil)
	if err := p.Start(req2, h2up.CompletionFunc(func(resp *http.Response, err error, rl *h2up.ReadLoop) {
		if rl != nil {
			rl.AtWait(fl)
			panic("test: a completion's bug")
		}
	})); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-first:
		if err == nil {
			t.Error("the first stream's body read ended without an error: its connection closed mid-body")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the first stream's completion never ran after the read loop panicked")
	}
	deadline := time.Now().Add(10 * time.Second)
	for fl.n.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if fl.n.Load() == 0 {
		t.Error("the flush a completion asked for (AtWait) was never made")
	}
	if panics.Load() != 1 {
		t.Errorf("OnPanic got %d panics, want 1", panics.Load())
	}
}
