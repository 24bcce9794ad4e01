package h2srv

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"golang.org/x/sys/unix"
)

// The raw read loop (serveRaw) over real TCP connections, the bytes
// written in pieces each of which the server has read before the next is
// written: every way a unit of frames can be split across reads.

// onlyConn waits for s's one connection (the one before it, whose read
// loop has ended, untracked).
func onlyConn(t testing.TB, s *Server) *conn {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		s.mu.Lock()
		for sc := range s.conns {
			select {
			case <-sc.done:
				continue
			default:
			}
			s.mu.Unlock()
			return sc
		}
		s.mu.Unlock()
		time.Sleep(time.Millisecond) // polling, bounded by the deadline
	}
	t.Fatal("no connection served")
	return nil
}

// unread is the number of bytes the server's socket holds unread; false
// once the connection is closed.
func unread(sc *conn) (int, bool) {
	rc, err := sc.nc.(syscall.Conn).SyscallConn()
	if err != nil {
		return 0, false
	}
	n, ierr := 0, error(nil)
	if err := rc.Control(func(fd uintptr) { n, ierr = unix.IoctlGetInt(int(fd), unix.SIOCINQ) }); err != nil || ierr != nil {
		return 0, false
	}
	return n, true
}

// waitRead waits until the server has read all that its socket holds, or
// its connection ended; it fails the test if the server leaves bytes
// unread for 10s (a lost wake-up: the read loop parked with bytes to read).
func waitRead(t testing.TB, sc *conn) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-sc.done:
			return
		default:
		}
		n, ok := unread(sc)
		if !ok || n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server left %d bytes unread for 10s", n)
		}
		time.Sleep(100 * time.Microsecond) // polling, bounded by the deadline
	}
}

// feedTCP connects to s at addr and writes the preface and then pieces,
// each once the server has read the ones before; it returns the client
// connection and the server's.
func feedTCP(t testing.TB, s *Server, addr string, pieces [][]byte) (net.Conn, *conn) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	sc := onlyConn(t, s)
	for _, p := range pieces {
		waitRead(t, sc)
		if _, err := c.Write(p); err != nil {
			break // the server ended the connection
		}
	}
	waitRead(t, sc)
	return c, sc
}

// splitAt cuts b at the offsets given (ascending, within b).
func splitAt(b []byte, at ...int) [][]byte {
	var out [][]byte
	last := 0
	for _, i := range at {
		out = append(out, b[last:i])
		last = i
	}
	return append(out, b[last:])
}

// echoBigHandler answers with the length of the x-big header and the
// request body.
var echoBigHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	fmt.Fprintf(w, "%d %s", len(r.Header.Get("X-Big")), body)
})

// requestUnit is one request as a client could send it, the kinds of
// frames the read loop must take apart: a PING, a frame of an unknown
// type, a padded HEADERS whose block goes on in two CONTINUATION frames
// (bigLen bytes of x-big in it), padded DATA, DATA ending the stream, a
// WINDOW_UPDATE and a second PING.
func requestUnit(t testing.TB, id uint32, bigLen int) []byte {
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, kv := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":authority", "x"}, {":path", "/"},
		{"x-big", strings.Repeat("b", bigLen)}} {
		enc.WriteField(hpack.HeaderField{Name: kv[0], Value: kv[1], Sensitive: true})
	}
	var out bytes.Buffer
	fr := http2.NewFramer(&out, nil)
	fr.WritePing(false, [8]byte{1, byte(id)})
	fr.WriteRawFrame(0xfa, 0, 0, []byte("unknown"))
	frag, n := block.Bytes(), 0
	first := min(len(frag)/3, maxReadFrame)
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: frag[:first], PadLength: 3}); err != nil {
		t.Fatal(err)
	}
	for n = first; len(frag)-n > maxReadFrame; n += maxReadFrame {
		fr.WriteContinuation(id, false, frag[n:n+maxReadFrame])
	}
	mid := n + (len(frag)-n)/2
	fr.WriteContinuation(id, false, frag[n:mid])
	fr.WriteContinuation(id, true, frag[mid:])
	fr.WriteDataPadded(id, false, []byte("hello "), []byte{0, 0, 0, 0, 0})
	fr.WriteData(id, true, []byte("world"))
	fr.WriteWindowUpdate(0, 1000)
	fr.WritePing(false, [8]byte{2, byte(id)})
	return out.Bytes()
}

// readAnswers reads what the server sends until the responses of
// streams 1 and 3 and both PINGs' acknowledgements of each came, and
// returns the response bodies.
func readAnswers(t testing.TB, c net.Conn, what string) (string, string) {
	t.Helper()
	fr := http2.NewFramer(c, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	body := map[uint32][]byte{}
	ended, acks := map[uint32]bool{}, map[byte]int{}
	for !ended[1] || !ended[3] || acks[1] < 2 || acks[3] < 2 {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("%s: %v (bodies %q and %q, ended %v, acks %v)", what, err, body[1], body[3], ended, acks)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if f.IsAck() {
				acks[f.Data[1]]++
			}
		case *http2.DataFrame:
			body[f.StreamID] = append(body[f.StreamID], f.Data()...)
			ended[f.StreamID] = ended[f.StreamID] || f.StreamEnded()
		case *http2.MetaHeadersFrame:
			ended[f.StreamID] = ended[f.StreamID] || f.StreamEnded()
		case *http2.RSTStreamFrame:
			t.Fatalf("%s: stream %d reset: %v", what, f.StreamID, f.ErrCode)
		case *http2.GoAwayFrame:
			t.Fatalf("%s: GOAWAY %v %q", what, f.ErrCode, f.DebugData())
		}
	}
	return string(body[1]), string(body[3])
}

// TestRawReadEveryByteSplit: a request's frames (PING, unknown type,
// padded HEADERS and CONTINUATIONs, padded DATA, WINDOW_UPDATE) cut at
// every byte boundary, the server reading each piece before the next
// comes: the request and both PINGs are answered, and the next request on
// the connection (cut there too) is.
func TestRawReadEveryByteSplit(t *testing.T) {
	s := &Server{Handler: echoBigHandler}
	addr := serve(t, s)
	settings := frameBytes(0, http2.FrameSettings, 0, 0, nil)
	first, second := requestUnit(t, 1, 40), requestUnit(t, 3, 40)
	for k := 1; k < len(first); k++ {
		stream := append(append(append([]byte{}, settings...), first...), second...)
		c, sc := feedTCP(t, s, addr, splitAt(stream, len(settings)+k, len(settings)+len(first)+k))
		what := fmt.Sprintf("cut at %d", k)
		if a1, a3 := readAnswers(t, c, what); a1 != "40 hello world" || a3 != a1 {
			t.Fatalf("%s: streams 1 and 3 answered %q and %q, want %q", what, a1, a3, "40 hello world")
		}
		c.Close()
		waitEnded(t, sc, what)
	}
}

// waitEnded waits for sc's read loop to end after the client closed.
func waitEnded(t testing.TB, sc *conn, what string) {
	t.Helper()
	select {
	case <-sc.done:
	case <-time.After(10 * time.Second):
		n, ok := unread(sc)
		t.Fatalf("%s: the read loop missed the client's close: still parked 10s on (unread %d, open %v)", what, n, ok)
	}
}

// TestRawReadHeaderBlockPastBuffer: a header block longer than the read
// loop's buffer (read by blocking reads, then back to the raw loop), cut
// around the buffer's end and at random places: no byte is lost or read
// twice in the switch; the frames read with the block's end and the next
// request are served.
func TestRawReadHeaderBlockPastBuffer(t *testing.T) {
	s := &Server{Handler: echoBigHandler}
	addr := serve(t, s)
	const big = 45000
	settings := frameBytes(0, http2.FrameSettings, 0, 0, nil)
	first, second := requestUnit(t, 1, big), requestUnit(t, 3, 10)
	stream := append(append(append([]byte{}, settings...), first...), second...)
	cuts := [][]int{nil}
	for _, at := range []int{inbufSize - 10, inbufSize - 1, inbufSize, inbufSize + 1, inbufSize + 9, inbufSize + 100, len(settings) + len(first) - 5} {
		cuts = append(cuts, []int{at})
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 8 {
		a, b := 1+r.IntN(len(stream)-2), 1+r.IntN(len(stream)-2)
		cuts = append(cuts, []int{min(a, b), max(a, b) + 1})
	}
	for _, at := range cuts {
		c, sc := feedTCP(t, s, addr, splitAt(stream, at...))
		what := fmt.Sprintf("cut at %v", at)
		a1, a3 := readAnswers(t, c, what)
		if want := strconv.Itoa(big) + " hello world"; a1 != want {
			t.Fatalf("%s: stream 1 answered %q, want %q", what, a1, want)
		}
		if a3 != "10 hello world" {
			t.Fatalf("%s: stream 3 answered %q", what, a3)
		}
		c.Close()
		waitEnded(t, sc, what)
	}
}

// endClass names how a connection ended, as the raw and the pipe read
// loops must agree on it: the connection error's code, or "io" for an end
// of input or a read error.
func endClass(err error) string {
	var ce http2.ConnectionError
	switch {
	case errors.As(err, &ce):
		return http2.ErrCode(ce).String()
	case errors.Is(err, errIncomplete):
		return "incomplete"
	case errors.Is(err, errClosed):
		return "closed" // closed by the server (a client's GOAWAY drained): when, is timing
	case err == nil, errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed),
		errors.Is(err, io.ErrClosedPipe), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "io"
	}
	return "other: " + err.Error()
}

// closeErrOf is sc's closing error, once its read loop has ended.
func closeErrOf(sc *conn) error {
	<-sc.done
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return sc.closeErr
}

// blockingHandler holds every stream open until its connection ends:
// nothing a handler does (a response, a body consumed and credited) moves
// the connection's end in time.
var blockingHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })

// endOverPipe serves stream (after the preface) over net.Pipe, the
// blocking read loop's path, and returns how the connection ended.
func endOverPipe(stream []byte) error {
	s := &Server{Handler: blockingHandler}
	c1, c2 := net.Pipe()
	go io.Copy(io.Discard, c2)
	go func() {
		c2.Write(append([]byte(http2.ClientPreface), stream...))
		c2.Close()
	}()
	sc := newConn(s, c1, ConnOptions{})
	sc.serve(false)
	return closeErrOf(sc)
}

// FuzzRawReadMatchesPipe: any bytes after the client's preface and
// SETTINGS, cut into pieces (seed) each read by the server before the
// next is written over TCP, end the connection as the same bytes do
// through net.Pipe (the blocking reads' path); the raw loop never asks
// for bytes it has not read (errIncomplete) and never leaves bytes unread
// (waitRead).
func FuzzRawReadMatchesPipe(f *testing.F) {
	f.Add(requestUnit(f, 1, 40), uint64(1))
	f.Add(requestUnit(f, 1, 40000), uint64(2))
	f.Add(append(requestUnit(f, 1, 10), frameBytes(maxReadFrame+1, http2.FrameData, 0, 1, nil)...), uint64(3))
	f.Add(append(frameBytes(3, http2.FrameHeaders, 0, 1, []byte{0x82, 0x86, 0x84}), frameBytes(8, http2.FramePing, 0, 0, make([]byte, 8))...), uint64(4))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), uint64(5))
	f.Add(frameBytes(4, http2.FrameData, http2.FlagDataPadded, 1, []byte{9, 'a', 'b', 'c'}), uint64(6))
	f.Fuzz(func(t *testing.T, data []byte, seed uint64) {
		if len(data) > 96<<10 {
			data = data[:96<<10]
		}
		stream := append(frameBytes(0, http2.FrameSettings, 0, 0, nil), data...)
		want := endClass(endOverPipe(stream))
		s := &Server{Handler: blockingHandler}
		addr := serve(t, s)
		r := rand.New(rand.NewPCG(seed, seed>>32))
		var at []int
		for i := 1 + r.IntN(64); i < len(stream); i += 1 + r.IntN(1+r.IntN(len(stream))) {
			at = append(at, i)
		}
		c, sc := feedTCP(t, s, addr, splitAt(stream, at...))
		go io.Copy(io.Discard, c)
		c.(*net.TCPConn).CloseWrite()
		select {
		case <-sc.done:
		case <-time.After(10 * time.Second):
			t.Fatalf("the read loop did not end 10s after the input did (cut at %v):\n%s", at, connGoroutines())
		}
		got := endClass(closeErrOf(sc))
		if got == "incomplete" {
			t.Fatalf("the raw read loop asked for bytes not read yet (cut at %v)", at)
		}
		if got == "io" && sc.in.r < sc.in.w {
			// The input ended inside a unit (a header block and the frame
			// after it): the raw loop waits for a unit whole before it
			// reads any of it, the blocking reads fail a bad first
			// fragment early (h2meta decodes it before the rest comes).
			return
		}
		if got != want && got != "closed" && want != "closed" {
			t.Fatalf("over TCP the connection ended %s, over a pipe %s (cut at %v)", got, want, at)
		}
	})
}

// TestRawReadSeesCloseBehindData: a client that sends its last frames and
// closes at once (a FIN, or with linger 0 an RST, queued behind the data
// before the server reads it): the read that takes the data comes back
// short, and the end behind it brings no wake-up of its own. The read
// loop still sees the end: the connection ends and the handler reading
// the open stream's body gets an error, not the clean end of a body whose
// stream never ended.
func TestRawReadSeesCloseBehindData(t *testing.T) {
	bodyErr := make(chan error, 1)
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, err := io.ReadAll(r.Body)
		bodyErr <- err
	})}
	addr := serve(t, s)
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, kv := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":authority", "x"}, {":path", "/"}} {
		enc.WriteField(hpack.HeaderField{Name: kv[0], Value: kv[1]})
	}
	var last bytes.Buffer
	fr := http2.NewFramer(&last, nil)
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block.Bytes(), EndHeaders: true})
	fr.WriteData(1, false, []byte("part of a body"))
	for i := range 40 {
		reset := i%2 == 1
		what := fmt.Sprintf("try %d (reset %v)", i, reset)
		c, sc := feedTCP(t, s, addr, [][]byte{frameBytes(0, http2.FrameSettings, 0, 0, nil)})
		go io.Copy(io.Discard, c)
		c.Write(last.Bytes())
		if reset {
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
		} else {
			c.(*net.TCPConn).CloseWrite()
		}
		waitEnded(t, sc, what)
		select {
		case err := <-bodyErr:
			if err == nil {
				t.Fatalf("%s: the body of a stream left open read to its end without an error", what)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: the handler's body read still blocked 10s after the connection ended", what)
		}
		c.Close()
	}
}
