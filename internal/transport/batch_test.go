package transport

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/identity"
)

// writeCounter counts the Writes that reach the socket.
type writeCounter struct {
	net.Conn
	writes atomic.Int64
}

func (c *writeCounter) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

func yamuxHeader(typ byte, length uint32) []byte {
	h := make([]byte, yamuxHeaderLen)
	h[1] = typ
	binary.BigEndian.PutUint32(h[4:], 1)
	binary.BigEndian.PutUint32(h[8:], length)
	return h
}

// TestTLSFrameConnBatchesDataFrames: over a real mutual TLS 1.3 connection, a
// yamux data frame (header, then a 32 KiB body) reaches the socket in one
// write, a frame without a body (window update) is written at once, a large
// body leaves in bounded writes, and the peer reads every byte in order.
func TestTLSFrameConnBatchesDataFrames(t *testing.T) {
	ca := testCA(t, "", nil)
	srvSrc := testSource(testSVID(t, ca, "s", "node-b"), ca.Bundle())
	cliSrc := testSource(testSVID(t, ca, "s", "node-a"), ca.Bundle())
	ln := listen(t, "127.0.0.1:0")
	got := make(chan []byte, 1)
	peerRead := make(chan []byte, 16)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		tc := tls.Server(c, srvSrc.ServerConfig(identity.AuthorizeNode(), identity.ALPNMesh))
		defer close(peerRead)
		var all bytes.Buffer
		buf := make([]byte, 64<<10)
		for {
			n, err := tc.Read(buf)
			if n > 0 {
				all.Write(buf[:n])
				peerRead <- append([]byte(nil), buf[:n]...)
			}
			if err != nil {
				got <- all.Bytes()
				return
			}
		}
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	wc := &writeCounter{Conn: raw}
	batch := newRecordBatcher(wc)
	tc := tls.Client(batch, cliSrc.ClientConfig(identity.AuthorizeNode(), identity.ALPNMesh))
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	fc := &tlsFrameConn{Conn: tc, batch: batch}
	var want bytes.Buffer
	write := func(p []byte) {
		t.Helper()
		if n, err := fc.Write(p); err != nil || n != len(p) {
			t.Fatalf("write %d bytes: %d, %v", len(p), n, err)
		}
		want.Write(p)
	}

	body := bytes.Repeat([]byte("0123456789abcdef"), 2048) // 32 KiB
	w0 := wc.writes.Load()
	write(yamuxHeader(yamuxTypeData, uint32(len(body))))
	if n := wc.writes.Load() - w0; n != 0 {
		t.Fatalf("a data header with a body was written at once (%d writes)", n)
	}
	write(body)
	if n := wc.writes.Load() - w0; n != 1 {
		t.Fatalf("data frame with a 32 KiB body: %d socket writes, want 1", n)
	}

	// A 12-byte body that looks like a data header is still a body: the
	// frame leaves at once.
	w0 = wc.writes.Load()
	write(yamuxHeader(yamuxTypeData, yamuxHeaderLen))
	write(yamuxHeader(yamuxTypeData, 7))
	if n := wc.writes.Load() - w0; n != 1 {
		t.Fatalf("data frame with a header-like 12-byte body: %d socket writes, want 1", n)
	}

	// A window update has no body: it must leave now, the peer reads it
	// without any later write.
	w0 = wc.writes.Load()
	write(yamuxHeader(1, 1<<20))
	if n := wc.writes.Load() - w0; n != 1 {
		t.Fatalf("window update: %d socket writes, want 1", n)
	}
	deadline := time.After(5 * time.Second)
	var seen int
	for seen < want.Len() {
		select {
		case p := <-peerRead:
			seen += len(p)
		case <-deadline:
			t.Fatalf("peer read %d of %d bytes: the window update was held back", seen, want.Len())
		}
	}

	go func() { // the peer keeps reading from here on
		for range peerRead {
		}
	}()

	// A 1 MiB body leaves in writes of about batchSize, not one 1 MiB buffer.
	big := bytes.Repeat([]byte{0xa5}, 1<<20)
	w0 = wc.writes.Load()
	write(yamuxHeader(yamuxTypeData, uint32(len(big))))
	write(big)
	if n := wc.writes.Load() - w0; n < 1<<20/(batchSize+1<<14) || n > 1<<20/batchSize+1 {
		t.Fatalf("1 MiB body: %d socket writes, want about %d", n, 1<<20/batchSize)
	}
	if cap(batch.buf) > 2*batchSize {
		t.Fatalf("batch buffer grew to %d bytes", cap(batch.buf))
	}
	tc.Close()
	if all := <-got; !bytes.Equal(all, want.Bytes()) {
		t.Fatalf("peer read %d bytes, want %d (equal: false)", len(all), want.Len())
	}
}

// readSizeConn records the largest buffer a Read offered the socket.
type readSizeConn struct {
	net.Conn
	largest atomic.Int64
}

func (c *readSizeConn) Read(p []byte) (int, error) {
	if int64(len(p)) > c.largest.Load() {
		c.largest.Store(int64(len(p)))
	}
	return c.Conn.Read(p)
}

// TestTLSReadsSeveralRecordsPerSyscall: under the mesh's tls.Conn the
// socket is read into a readBufSize buffer, so one read syscall can take
// several 16 KiB records (crypto/tls alone asks for about one record at a
// time); the bytes arrive intact.
func TestTLSReadsSeveralRecordsPerSyscall(t *testing.T) {
	ca := testCA(t, "", nil)
	srvSrc := testSource(testSVID(t, ca, "s", "node-b"), ca.Bundle())
	cliSrc := testSource(testSVID(t, ca, "s", "node-a"), ca.Bundle())
	ln := listen(t, "127.0.0.1:0")
	payload := bytes.Repeat([]byte("fogmesh!"), 64<<10) // 512 KiB
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		tc := tls.Server(c, srvSrc.ServerConfig(identity.AuthorizeNode(), identity.ALPNMesh))
		tc.Write(payload)
		tc.Close()
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	rc := &readSizeConn{Conn: raw}
	tc := tls.Client(newRecordBatcher(rc), cliSrc.ClientConfig(identity.AuthorizeNode(), identity.ALPNMesh))
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(tc)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("read %d bytes, not the payload", len(got))
	}
	if n := rc.largest.Load(); n < readBufSize {
		t.Fatalf("largest socket read offered %d bytes, want %d (several records)", n, readBufSize)
	}
}
