package transport

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/fogmesh/fogmesh/internal/netseam"
)

// recordNet is a client Network whose connections record every write call
// that reaches them (Write, or WriteBuffers, which a socket turns into one
// writev): each call's bytes, in order.
type recordNet struct {
	mu    sync.Mutex
	calls [][]byte
}

func (n *recordNet) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := netseam.OS{}.Dial(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return &recordConn{Conn: c, n: n}, nil
}

func (n *recordNet) Listen(ctx context.Context, network, addr string) (net.Listener, error) {
	return netseam.OS{}.Listen(ctx, network, addr)
}

func (n *recordNet) record(p []byte) {
	n.mu.Lock()
	n.calls = append(n.calls, append([]byte(nil), p...))
	n.mu.Unlock()
}

// wire returns the bytes written so far and the write calls' lengths.
func (n *recordNet) wire() ([]byte, []int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	var all []byte
	var lens []int
	for _, c := range n.calls {
		all = append(all, c...)
		lens = append(lens, len(c))
	}
	return all, lens
}

type recordConn struct {
	net.Conn
	n *recordNet
}

func (c *recordConn) Write(p []byte) (int, error) {
	c.n.record(p)
	return c.Conn.Write(p)
}

func (c *recordConn) WriteBuffers(bufs net.Buffers) (int64, error) {
	var all []byte
	for _, b := range bufs {
		all = append(all, b...)
	}
	c.n.record(all)
	return bufs.WriteTo(c.Conn)
}

// wireFrame is one yamux frame parsed from the wire: where it starts, its type
// and, for a data frame, its body length.
type wireFrame struct {
	off  int
	typ  byte
	body int
}

// parseFrames splits a yamux byte stream into frames; a trailing partial
// frame is left out.
func parseFrames(t *testing.T, b []byte) []wireFrame {
	t.Helper()
	var fs []wireFrame
	for off := 0; off+yamuxHeaderLen <= len(b); {
		h := b[off : off+yamuxHeaderLen]
		if h[0] != 0 || h[1] > 3 {
			t.Fatalf("bad yamux header at %d: % x", off, h)
		}
		f := wireFrame{off: off, typ: h[1]}
		if h[1] == yamuxTypeData {
			f.body = int(binary.BigEndian.Uint32(h[8:]))
		}
		if off+yamuxHeaderLen+f.body > len(b) {
			break
		}
		fs = append(fs, f)
		off += yamuxHeaderLen + f.body
	}
	return fs
}

// TestPlainMeshDataFrameInOneWrite: on the plaintext mesh port every data
// frame's header and body reach the socket in one write call (one writev),
// not a 12-byte write and then the body; control frames go out on their
// own; the peer reads every byte in order.
func TestPlainMeshDataFrameInOneWrite(t *testing.T) {
	srv := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{"echo": serveWorkload(t, "127.0.0.1:0", echo)}, nil)
	rn := &recordNet{}
	c := NewClient(ClientConfig{SourceNode: "node-a", Network: rn})
	t.Cleanup(func() { c.Close() })
	conn, err := c.Dial(t.Context(), srv.addr, header("echo"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, n := range []int{1, 100, 5000, 40 << 10} {
		roundTrip(t, conn, string(bytes.Repeat([]byte{'x'}, n)))
	}

	all, lens := rn.wire()
	frames := parseFrames(t, all)
	// Where each write call starts on the wire.
	starts := map[int]int{}
	off := 0
	for i, n := range lens {
		starts[off] = i
		off += n
	}
	data := 0
	for _, f := range frames {
		i, ok := starts[f.off]
		if !ok {
			t.Fatalf("frame at %d (type %d) does not start a write call", f.off, f.typ)
		}
		if f.typ != yamuxTypeData || f.body == 0 {
			continue
		}
		data++
		if lens[i] < yamuxHeaderLen+f.body {
			t.Errorf("data frame at %d with a %d-byte body: its first write call has %d bytes, want header and body together (%d)",
				f.off, f.body, lens[i], yamuxHeaderLen+f.body)
		}
	}
	if data < 5 { // the stream header and four messages
		t.Fatalf("saw %d data frames, want at least 5", data)
	}
}

// TestStreamCopyLargeFrames: io.Copy into a mesh stream from a reader that
// keeps filling the buffer (a bulk flow, as the agents' relays copy) sends
// data frames larger than io.Copy's 32 KiB buffer and no larger than
// copyBufLarge; the bytes arrive intact.
func TestStreamCopyLargeFrames(t *testing.T) {
	const size = 4 << 20
	got := make(chan []byte, 1)
	sink := func(c net.Conn) {
		b, _ := io.ReadAll(c)
		got <- b
	}
	srv := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{"sink": serveWorkload(t, "127.0.0.1:0", sink)}, nil)
	rn := &recordNet{}
	c := NewClient(ClientConfig{SourceNode: "node-a", Network: rn})
	t.Cleanup(func() { c.Close() })
	conn, err := c.Dial(t.Context(), srv.addr, header("sink"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	payload := make([]byte, size)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	// Hide bytes.Reader's WriteTo, as (*net.TCPConn).WriteTo does for a
	// socket: io.Copy then reads into a buffer.
	src := struct{ io.Reader }{bytes.NewReader(payload)}
	if n, err := io.Copy(conn, src); err != nil || n != size {
		t.Fatalf("copy: %d, %v", n, err)
	}
	conn.(interface{ CloseWrite() error }).CloseWrite()
	select {
	case b := <-got:
		if !bytes.Equal(b, payload) {
			t.Fatalf("sink got %d bytes, not the payload", len(b))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("sink got nothing")
	}
	all, _ := rn.wire()
	largest := 0
	for _, f := range parseFrames(t, all) {
		largest = max(largest, f.body)
	}
	if largest <= 32<<10 || largest > copyBufLarge {
		t.Fatalf("largest data frame %d bytes, want above 32 KiB and at most %d", largest, copyBufLarge)
	}
}

// sizeRecorder is an io.Writer that keeps what it got and the largest write.
// It has no ReadFrom, so io.Copy into it goes through Write.
type sizeRecorder struct {
	buf     bytes.Buffer
	largest int
}

func (w *sizeRecorder) Write(p []byte) (int, error) {
	w.largest = max(w.largest, len(p))
	return w.buf.Write(p)
}

// TestStreamCopyOutLargeWrites: io.Copy out of a mesh stream that carries a
// bulk flow writes to its destination in writes larger than io.Copy's
// 32 KiB buffer (one socket write each on the agent), and the bytes arrive
// intact.
func TestStreamCopyOutLargeWrites(t *testing.T) {
	const size = 4 << 20
	payload := make([]byte, size)
	for i := range payload {
		payload[i] = byte(i * 13)
	}
	src := serveWorkload(t, "127.0.0.1:0", func(c net.Conn) {
		c.Write(payload) // one write: the server relays it in large frames
	})
	srv := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{"src": src}, nil)
	c, _ := newClient(t)
	conn, err := c.Dial(t.Context(), srv.addr, header("src"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var w sizeRecorder
	if n, err := io.Copy(&w, conn); err != nil || n != size {
		t.Fatalf("copy: %d, %v", n, err)
	}
	if !bytes.Equal(w.buf.Bytes(), payload) {
		t.Fatal("bytes differ")
	}
	if w.largest <= 32<<10 || w.largest > copyBufLarge {
		t.Fatalf("largest write %d bytes, want above 32 KiB and at most %d", w.largest, copyBufLarge)
	}
}

// stallDialer connects every stream to one end of a net.Pipe nobody reads:
// the server's relay blocks on its first write, so what the client can
// write before it blocks is the stream's receive window plus the relay's
// buffer.
type stallDialer struct {
	mu    sync.Mutex
	peers []net.Conn
}

func (d *stallDialer) DialLocal(context.Context, Header) (net.Conn, error) {
	a, b := net.Pipe()
	d.mu.Lock()
	d.peers = append(d.peers, b)
	d.mu.Unlock()
	return a, nil
}

func (d *stallDialer) close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, c := range d.peers {
		c.Close()
	}
}

// TestStreamWindowConfigured: with StreamWindow set on both ends, a stream
// whose destination does not read takes that many bytes (less the stream
// header it carried) before the writer blocks; the default window takes
// far more.
func TestStreamWindowConfigured(t *testing.T) {
	const window = 512 << 10
	written := func(t *testing.T, w int) int {
		d := &stallDialer{}
		t.Cleanup(d.close)
		srv := startServer(t, listen(t, "127.0.0.1:0"), d, func(c *ServerConfig) { c.StreamWindow = w })
		c := NewClient(ClientConfig{SourceNode: "node-a", StreamWindow: w})
		t.Cleanup(func() { c.Close() })
		conn, err := c.Dial(t.Context(), srv.addr, header("x"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		// The write blocks once the window is used up; the deadline ends it.
		conn.SetWriteDeadline(time.Now().Add(2 * time.Second))
		n, err := conn.Write(make([]byte, 32<<20))
		if !errors.Is(err, yamux.ErrTimeout) {
			t.Fatalf("write: %d, %v; want a timeout", n, err)
		}
		return n
	}
	n := written(t, window)
	if n < window-4096 || n > window+4096 {
		t.Fatalf("window %d: wrote %d bytes before blocking, want about the window", window, n)
	}
	if n := written(t, 0); n < DefaultStreamWindow-4096 {
		t.Fatalf("default window: wrote %d bytes before blocking, want about %d", n, DefaultStreamWindow)
	}
	if _, err := checkStreamWindow(1); err == nil {
		t.Fatalf("a window of 1 byte was taken; the minimum is %d", MinStreamWindow)
	}
}
