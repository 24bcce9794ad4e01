package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"testing"
	"time"
)

// relayResult is what a Relay call returned.
type relayResult struct {
	aToB, bToA int64
	err        error
}

// startRelay wires client <-> [Relay] <-> backend over real loopback TCP.
// backend runs on the backend side of the relay with its own conn.
// It returns the client's conn and a channel with Relay's result.
func startRelay(t testing.TB, ctx context.Context, backend func(net.Conn)) (*net.TCPConn, <-chan relayResult) {
	t.Helper()
	return startRelayWrap(t, ctx, nil, backend)
}

// startRelayWrap is startRelay with both of Relay's conns passed through
// wrap first (nil: none).
func startRelayWrap(t testing.TB, ctx context.Context, wrap func(net.Conn) net.Conn, backend func(net.Conn)) (*net.TCPConn, <-chan relayResult) {
	t.Helper()
	return startRelayWith(t, func(a, b net.Conn) (r relayResult) {
		if wrap != nil {
			a, b = wrap(a), wrap(b)
		}
		r.aToB, r.bToA, r.err = Relay(ctx, a, b)
		return r
	}, backend)
}

// startRelayWith is startRelay with relay in Relay's place.
func startRelayWith(t testing.TB, relay func(a, b net.Conn) relayResult, backend func(net.Conn)) (*net.TCPConn, <-chan relayResult) {
	t.Helper()
	backLn := listen(t)
	go func() {
		c, err := backLn.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		backend(c)
	}()

	frontLn := listen(t)
	res := make(chan relayResult, 1)
	go func() {
		a, err := frontLn.Accept()
		if err != nil {
			res <- relayResult{err: err}
			return
		}
		b, err := net.Dial("tcp", backLn.Addr().String())
		if err != nil {
			a.Close()
			res <- relayResult{err: err}
			return
		}
		res <- relay(a, b)
	}()

	c, err := net.Dial("tcp", frontLn.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn), res
}

func listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func waitResult(t testing.TB, res <-chan relayResult, d time.Duration) relayResult {
	t.Helper()
	select {
	case r := <-res:
		return r
	case <-time.After(d):
		t.Fatalf("Relay did not return within %v", d)
		return relayResult{}
	}
}

func TestRelayEcho(t *testing.T) {
	c, res := startRelay(t, t.Context(), func(c net.Conn) { io.Copy(c, c) })

	msg := []byte("hello through the relay")
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo = %q, want %q", got, msg)
	}
	c.Close()

	r := waitResult(t, res, 5*time.Second)
	if r.err != nil {
		t.Fatalf("Relay err = %v, want nil", r.err)
	}
	if r.aToB != int64(len(msg)) || r.bToA != int64(len(msg)) {
		t.Fatalf("Relay counts = %d, %d, want %d both", r.aToB, r.bToA, len(msg))
	}
}

// TestRelayBulk sends 64 MiB each way at the same time and checks both
// streams arrive intact, on bare TCP conns (splice) and on wrapped ones
// (lazyCopy).
func TestRelayBulk(t *testing.T) {
	t.Run("splice", func(t *testing.T) { testRelayBulk(t, nil) })
	t.Run("lazy", func(t *testing.T) { testRelayBulk(t, hideCopiers) })
}

func testRelayBulk(t *testing.T, wrap func(net.Conn) net.Conn) {
	const size = 64 << 20
	type sum struct {
		n   int64
		sum [32]byte
		err error
	}
	backRecv := make(chan sum, 1)
	c, res := startRelayWrap(t, t.Context(), wrap, func(c net.Conn) {
		sent := make(chan struct{})
		defer func() { <-sent }() // keep c open until the reply is out
		go func() {
			defer close(sent)
			n, err := io.Copy(c, io.LimitReader(newStream(2), size))
			if err == nil {
				err = c.(*net.TCPConn).CloseWrite()
			}
			if err != nil || n != size {
				t.Errorf("backend send: n=%d err=%v", n, err)
			}
		}()
		h := sha256.New()
		n, err := io.Copy(h, c)
		backRecv <- sum{n, [32]byte(h.Sum(nil)), err}
	})

	sendErr := make(chan error, 1)
	go func() {
		_, err := io.Copy(c, io.LimitReader(newStream(1), size))
		if err == nil {
			err = c.CloseWrite()
		}
		sendErr <- err
	}()
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil || n != size {
		t.Fatalf("client recv: n=%d err=%v", n, err)
	}
	if got, want := [32]byte(h.Sum(nil)), streamSum(2, size); got != want {
		t.Fatal("client received corrupted data")
	}
	if err := <-sendErr; err != nil {
		t.Fatalf("client send: %v", err)
	}
	br := <-backRecv
	if br.err != nil || br.n != size {
		t.Fatalf("backend recv: n=%d err=%v", br.n, br.err)
	}
	if br.sum != streamSum(1, size) {
		t.Fatal("backend received corrupted data")
	}

	r := waitResult(t, res, 10*time.Second)
	if r.err != nil || r.aToB != size || r.bToA != size {
		t.Fatalf("Relay = %d, %d, %v; want %d both and nil", r.aToB, r.bToA, r.err, size)
	}
}

// TestRelayHalfClose checks that a client can half-close its request and
// still read the reply the backend sends after seeing EOF.
func TestRelayHalfClose(t *testing.T) {
	c, res := startRelay(t, t.Context(), func(c net.Conn) {
		req, err := io.ReadAll(c) // until the relayed EOF
		if err != nil {
			t.Errorf("backend read: %v", err)
			return
		}
		c.Write(append([]byte("reply to "), req...))
	})

	if _, err := c.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "reply to request" {
		t.Fatalf("reply = %q", got)
	}
	r := waitResult(t, res, 5*time.Second)
	if r.err != nil || r.aToB != 7 || r.bToA != 16 {
		t.Fatalf("Relay = %d, %d, %v; want 7, 16, nil", r.aToB, r.bToA, r.err)
	}
}

// TestRelayPeerReset checks that a backend that vanishes with a RST while
// the client is idle ends Relay promptly and closes the client's side.
func TestRelayPeerReset(t *testing.T) {
	c, res := startRelay(t, t.Context(), func(c net.Conn) {
		buf := make([]byte, 5)
		io.ReadFull(c, buf)
		tc := c.(*net.TCPConn)
		tc.SetLinger(0)
		tc.Close()
	})
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	r := waitResult(t, res, 3*time.Second)
	if r.err == nil {
		t.Fatal("Relay err = nil, want the reset error")
	}
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.ReadAll(c); err != nil && !isTeardown(err) {
		t.Fatalf("client read after reset: %v", err)
	}
}

// TestRelayPeerResetMidStream resets the backend while the client is still
// streaming into the relay.
func TestRelayPeerResetMidStream(t *testing.T) {
	c, res := startRelay(t, t.Context(), func(c net.Conn) {
		io.CopyN(io.Discard, c, 1<<20)
		tc := c.(*net.TCPConn)
		tc.SetLinger(0)
		tc.Close()
	})
	go io.Copy(c, newStream(3)) // ends when the relay closes c
	r := waitResult(t, res, 3*time.Second)
	if r.err == nil {
		t.Fatal("Relay err = nil, want the reset error")
	}
	if r.aToB < 1<<20 {
		t.Fatalf("aToB = %d, want at least 1 MiB", r.aToB)
	}
}

func TestRelayContextCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	c, res := startRelay(t, ctx, func(c net.Conn) { io.Copy(c, c) })
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	cancel()
	r := waitResult(t, res, 3*time.Second)
	if !errors.Is(r.err, context.Canceled) {
		t.Fatalf("Relay err = %v, want context.Canceled", r.err)
	}
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.ReadAll(c); err != nil && !isTeardown(err) {
		t.Fatalf("client read after cancel: %v", err)
	}
}

// TestRelayNoCloseWrite relays between conns without CloseWrite (net.Pipe):
// EOF on one side must end the whole relay instead of hanging.
func TestRelayNoCloseWrite(t *testing.T) {
	a1, a2 := net.Pipe()
	b1, b2 := net.Pipe()
	res := make(chan relayResult, 1)
	go func() {
		var r relayResult
		r.aToB, r.bToA, r.err = Relay(t.Context(), a2, b1)
		res <- r
	}()
	go io.Copy(b2, b2)
	a1.Write([]byte("ping"))
	got := make([]byte, 4)
	if _, err := io.ReadFull(a1, got); err != nil || string(got) != "ping" {
		t.Fatalf("echo = %q, %v", got, err)
	}
	a1.Close()
	r := waitResult(t, res, 3*time.Second)
	if r.err != nil {
		t.Fatalf("Relay err = %v, want nil", r.err)
	}
	b2.Close()
}

func TestRelayNoGoroutineLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	for range 10 {
		func() {
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			c, res := startRelay(t, ctx, func(c net.Conn) { io.Copy(c, c) })
			c.Write([]byte("x"))
			io.ReadFull(c, make([]byte, 1))
			c.Close()
			waitResult(t, res, 3*time.Second)
		}()
	}
	deadline := time.Now().Add(3 * time.Second)
	for runtime.NumGoroutine() > before+2 { // the listeners' Accept goroutines end at Cleanup
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutines: %d before, %d after\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// newStream returns an endless deterministic byte stream.
func newStream(seed uint64) io.Reader {
	return &chachaReader{rand.NewChaCha8([32]byte{byte(seed)})}
}

type chachaReader struct{ c *rand.ChaCha8 }

func (r *chachaReader) Read(p []byte) (int, error) { return r.c.Read(p) }

func streamSum(seed uint64, n int64) [32]byte {
	h := sha256.New()
	io.Copy(h, io.LimitReader(newStream(seed), n))
	return [32]byte(h.Sum(nil))
}

// BenchmarkRelayTCP measures one-way throughput client -> Relay -> sink
// over loopback TCP. Compare with BenchmarkDirectTCP.
func BenchmarkRelayTCP(b *testing.B) {
	benchTCP(b, true)
}

// BenchmarkDirectTCP is BenchmarkRelayTCP without the relay.
func BenchmarkDirectTCP(b *testing.B) {
	benchTCP(b, false)
}

// BenchmarkRelayTCPLazy is BenchmarkRelayTCP on conns that cannot splice
// (as the relay's TLS legs): Relay's own copy loop.
func BenchmarkRelayTCPLazy(b *testing.B) {
	benchTCPWrap(b, true, hideCopiers)
}

func benchTCP(b *testing.B, relayed bool) {
	benchTCPWrap(b, relayed, nil)
}

// BenchmarkRelayTCPIdleWrapped is BenchmarkRelayTCP with an idle timeout
// as the agent had it before RelayIdle: WithIdleTimeout's wrappers (no
// splice, a read deadline per read).
func BenchmarkRelayTCPIdleWrapped(b *testing.B) {
	benchTCPWith(b, func(a, c net.Conn) {
		wa, wc := WithIdleTimeout(a, c, time.Minute)
		Relay(context.Background(), wa, wc)
	})
}

// BenchmarkRelayTCPIdleWatch is BenchmarkRelayTCP through RelayIdle.
func BenchmarkRelayTCPIdleWatch(b *testing.B) {
	benchTCPWith(b, func(a, c net.Conn) { RelayIdle(context.Background(), a, c, time.Minute) })
}

func benchTCPWrap(b *testing.B, relayed bool, wrap func(net.Conn) net.Conn) {
	if !relayed {
		benchTCPWith(b, nil)
		return
	}
	benchTCPWith(b, func(a, c net.Conn) {
		if wrap != nil {
			a, c = wrap(a), wrap(c)
		}
		Relay(context.Background(), a, c)
	})
}

// benchTCPWith measures client -> relay -> sink (relay nil: direct).
func benchTCPWith(b *testing.B, relay func(a, c net.Conn)) {
	const chunk = 1 << 20
	sinkLn := listen(b)
	sunk := make(chan int64, 1)
	go func() {
		c, err := sinkLn.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		n, _ := io.Copy(io.Discard, c)
		sunk <- n
	}()

	sinkAddr := sinkLn.Addr().String()
	addr := sinkAddr
	if relay != nil {
		frontLn := listen(b)
		go func() {
			a, err := frontLn.Accept()
			if err != nil {
				return
			}
			c, err := net.Dial("tcp", sinkAddr)
			if err != nil {
				a.Close()
				return
			}
			relay(a, c)
		}()
		addr = frontLn.Addr().String()
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()

	buf := make([]byte, chunk)
	b.SetBytes(chunk)
	var sent int64
	cpu0 := processCPU()
	for b.Loop() {
		n, err := c.Write(buf)
		if err != nil {
			b.Fatal(err)
		}
		sent += int64(n)
	}
	b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N), "cpu-ns/op") // per MiB, client and sink included
	c.(*net.TCPConn).CloseWrite()
	if n := <-sunk; n != sent {
		b.Fatalf("sink got %d bytes, want %d", n, sent)
	}
}
