package paths

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// TestCountConnWritesBuffersTogether: a direct path's byte-counting conn
// lets the plaintext mesh hand a frame's header and body to one writev
// (transport.BuffersWriter), counts those bytes, and the peer gets them in
// order.
func TestCountConnWritesBuffersTogether(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		b, _ := io.ReadAll(c)
		got <- b
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	st := &byteCount{}
	var c net.Conn = &countConn{Conn: raw, b: st}
	// transport.BuffersWriter, spelt out so the test builds without it.
	bw, ok := c.(interface {
		WriteBuffers(net.Buffers) (int64, error)
	})
	if !ok {
		t.Fatal("countConn does not pass a writev on (transport.BuffersWriter)")
	}
	hdr, body := []byte("0123456789ab"), bytes.Repeat([]byte{7}, 40<<10)
	n, err := bw.WriteBuffers(net.Buffers{hdr, body})
	if err != nil || n != int64(len(hdr)+len(body)) {
		t.Fatalf("WriteBuffers: %d, %v", n, err)
	}
	if out := st.out.Load(); out != uint64(n) {
		t.Fatalf("counted %d bytes out, want %d", out, n)
	}
	raw.(*net.TCPConn).CloseWrite()
	if b := <-got; !bytes.Equal(b, append(hdr, body...)) {
		t.Fatalf("peer got %d bytes, not header and body in order", len(b))
	}
	raw.Close()
}
