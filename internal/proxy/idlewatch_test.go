package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"
)

// startIdleRelay is startRelay through RelayIdle with timeout d.
func startIdleRelay(t *testing.T, d time.Duration, backend func(net.Conn)) (*net.TCPConn, <-chan relayResult) {
	return startRelayWith(t, func(a, b net.Conn) (r relayResult) {
		r.aToB, r.bToA, r.err = RelayIdle(t.Context(), a, b, d)
		return r
	}, backend)
}

// lineEcho answers each line with "echo: " and the line.
func lineEcho(c net.Conn) {
	br := bufio.NewReader(c)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		if _, err := io.WriteString(c, "echo: "+line); err != nil {
			return
		}
	}
}

// exchange writes a line to c and reads the echo.
func exchange(t *testing.T, c net.Conn, br *bufio.Reader, i int) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "ping %d\n", i)
	line, err := br.ReadString('\n')
	if err != nil || line != fmt.Sprintf("echo: ping %d\n", i) {
		t.Fatalf("exchange %d: %q %v", i, line, err)
	}
}

// TestRelayIdleTCPStaysBare: between two *net.TCPConn (Linux), RelayIdle
// relays the connections themselves (splice, nothing per read) and
// watches the kernel's idle times; other connections get the read-deadline
// wrappers.
func TestRelayIdleTCPStaysBare(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("TCP_INFO idle times are read on Linux only")
	}
	c, res := startRelayWith(t, func(a, b net.Conn) relayResult {
		ra, rb, w := idleConns(a, b, time.Second)
		if ra != a || rb != b || w == nil {
			return relayResult{err: fmt.Errorf("TCP pair: relays %T and %T, watch %v; want the conns themselves and a watch", ra, rb, w != nil)}
		}
		ha := hideCopiers(a)
		ra, rb, w = idleConns(ha, b, time.Second)
		if ra == ha || w != nil {
			return relayResult{err: fmt.Errorf("wrapped conn: relays %T with watch %v; want idle wrappers, no watch", ra, w != nil)}
		}
		a.Close()
		b.Close()
		return relayResult{}
	}, func(net.Conn) {})
	defer c.Close()
	if r := waitResult(t, res, 5*time.Second); r.err != nil {
		t.Fatal(r.err)
	}
}

// TestRelayIdleEndsSilentPair: a TCP pair that moved no byte for the
// timeout is closed, the client reads EOF, and RelayIdle returns ErrIdle;
// the kernel clock says so, not a read deadline.
func TestRelayIdleEndsSilentPair(t *testing.T) {
	const d = 300 * time.Millisecond
	c, res := startIdleRelay(t, d, lineEcho)
	br := bufio.NewReader(c)
	exchange(t, c, br, 0)
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("silent client read %d bytes, %v; want EOF from the idle close", n, err)
	}
	took := time.Since(start)
	r := waitResult(t, res, 5*time.Second)
	if !errors.Is(r.err, ErrIdle) {
		t.Fatalf("RelayIdle returned %v, want ErrIdle", r.err)
	}
	if took < d-20*time.Millisecond {
		t.Fatalf("closed %v after the last byte, before the %v timeout", took, d)
	}
	t.Logf("closed %v after the last byte (timeout %v)", took, d)
}

// TestRelayIdleKeepsActivePairs: a pair that talks every 50 ms, and one that
// only sends one way, outlive several timeouts; once silent they end.
func TestRelayIdleKeepsActivePairs(t *testing.T) {
	const d = 400 * time.Millisecond
	t.Run("both ways", func(t *testing.T) {
		c, res := startIdleRelay(t, d, lineEcho)
		br := bufio.NewReader(c)
		for i := range 30 { // 1.5 s
			exchange(t, c, br, i)
			select {
			case r := <-res:
				t.Fatalf("relay ended after %d exchanges 50 ms apart: %v", i, r.err)
			case <-time.After(50 * time.Millisecond):
			}
		}
		if r := waitResult(t, res, 10*time.Second); !errors.Is(r.err, ErrIdle) {
			t.Fatalf("after the exchanges: %v, want ErrIdle", r.err)
		}
	})
	t.Run("one way", func(t *testing.T) {
		got := make(chan int, 1)
		c, res := startIdleRelay(t, d, func(c net.Conn) {
			n, _ := io.Copy(io.Discard, c)
			got <- int(n)
		})
		msg := strings.Repeat("x", 100)
		for i := range 30 {
			c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.WriteString(c, msg); err != nil {
				t.Fatalf("write %d: %v", i, err)
			}
			select {
			case r := <-res:
				t.Fatalf("relay ended after %d one-way writes 50 ms apart: %v", i, r.err)
			case <-time.After(50 * time.Millisecond):
			}
		}
		c.CloseWrite()
		if n := <-got; n != 30*len(msg) {
			t.Fatalf("backend read %d bytes, want %d", n, 30*len(msg))
		}
		waitResult(t, res, 10*time.Second)
	})
}

// TestRelayIdleContextCancel: cancelling the caller's context still ends
// RelayIdle with the context's error, not ErrIdle.
func TestRelayIdleContextCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	c, res := startRelayWith(t, func(a, b net.Conn) (r relayResult) {
		r.aToB, r.bToA, r.err = RelayIdle(ctx, a, b, time.Hour)
		return r
	}, lineEcho)
	exchange(t, c, bufio.NewReader(c), 0)
	cancel()
	if r := waitResult(t, res, 5*time.Second); !errors.Is(r.err, context.Canceled) {
		t.Fatalf("RelayIdle after cancel: %v, want context.Canceled", r.err)
	}
}

// TestWithIdleTimeoutZeroIsNone: no timeout (d <= 0) leaves the conns as
// they are, as RelayIdle does: the agent's MQTT path passes its timeout
// unchecked.
func TestWithIdleTimeoutZeroIsNone(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	for _, d := range []time.Duration{0, -time.Second} {
		if wa, wb := WithIdleTimeout(a, b, d); wa != a || wb != b {
			t.Fatalf("WithIdleTimeout(%v) wrapped the conns (%T, %T), want them as they are", d, wa, wb)
		}
	}
}

// TestWithIdleTimeoutHonoursReadDeadline: a read deadline its user sets
// (the MQTT relay's keep alive limit) ends a read on a wrapped conn with
// a timeout when it comes before the idle limit, also when set while the
// read waits; the idle limit still ends it (ErrIdle) when that comes
// first; a deadline cleared leaves the idle limit alone.
func TestWithIdleTimeoutHonoursReadDeadline(t *testing.T) {
	a, _ := pipeEnds(t)
	b, _ := pipeEnds(t)
	buf := make([]byte, 1)
	isTimeout := func(err error) bool {
		var ne net.Error
		return errors.As(err, &ne) && ne.Timeout()
	}

	wa, _ := WithIdleTimeout(a, b, time.Hour)
	wa.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := wa.Read(buf); !isTimeout(err) || errors.Is(err, ErrIdle) {
		t.Fatalf("read past the user's deadline: %v, want a timeout", err)
	}

	wa, _ = WithIdleTimeout(a, b, time.Hour)
	wa.SetReadDeadline(time.Time{})
	go func() { wa.SetReadDeadline(time.Now().Add(50 * time.Millisecond)) }()
	if _, err := wa.Read(buf); !isTimeout(err) || errors.Is(err, ErrIdle) {
		t.Fatalf("read with a deadline set while it waited: %v, want a timeout", err)
	}

	wa, _ = WithIdleTimeout(a, b, 100*time.Millisecond)
	wa.SetReadDeadline(time.Now().Add(time.Hour))
	if _, err := wa.Read(buf); !errors.Is(err, ErrIdle) {
		t.Fatalf("read past the idle limit with a later deadline: %v, want ErrIdle", err)
	}

	wa, _ = WithIdleTimeout(a, b, 100*time.Millisecond)
	wa.SetReadDeadline(time.Now().Add(time.Millisecond))
	wa.SetReadDeadline(time.Time{})
	if _, err := wa.Read(buf); !errors.Is(err, ErrIdle) {
		t.Fatalf("read after the deadline was cleared: %v, want ErrIdle", err)
	}
}

// TestWithIdleTimeoutUserDeadlineMovedLater: a read waiting under the
// user's deadline, which the user then moves later (the MQTT relay when
// the broker's CONNACK lengthens the keep alive), ends at the new
// deadline, not at the old one or at an idle limit that activity the
// other way keeps putting off.
func TestWithIdleTimeoutUserDeadlineMovedLater(t *testing.T) {
	a, _ := pipeEnds(t)
	b, peerB := pipeEnds(t)
	go io.Copy(io.Discard, peerB)
	wa, wb := WithIdleTimeout(a, b, 200*time.Millisecond)
	stop := make(chan struct{})
	defer close(stop)
	go func() { // the other direction moves bytes
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
				wb.Write([]byte{1})
			}
		}
	}()
	for attempt := 0; ; attempt++ {
		began := time.Now()
		wa.SetReadDeadline(began.Add(50 * time.Millisecond))
		moved := make(chan time.Time, 1)
		go func() {
			wa.SetReadDeadline(time.Now().Add(600 * time.Millisecond))
			moved <- time.Now()
		}()
		_, err := wa.Read(make([]byte, 1))
		took := time.Since(began)
		if at := <-moved; at.Sub(began) >= 50*time.Millisecond {
			if attempt < 3 {
				continue // the move came after the old deadline: not the case under test
			}
			t.Skip("the deadline could not be moved within 50 ms on this machine")
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() || errors.Is(err, ErrIdle) {
			t.Fatalf("read ended with %v, want the user's timeout", err)
		}
		if took < 600*time.Millisecond {
			t.Fatalf("read ended after %v, before the user's new deadline (600 ms)", took)
		}
		return
	}
}

// pipeEnds returns the two ends of a net.Pipe, closed when the test ends.
func pipeEnds(t *testing.T) (net.Conn, net.Conn) {
	x, y := net.Pipe()
	t.Cleanup(func() { x.Close(); y.Close() })
	return x, y
}
