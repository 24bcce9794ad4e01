package gateway

import (
	"context"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/fogmesh/fogmesh/internal/testenv"
)

// upstream serves on loopback: each connection is read and discarded
// (the count of bytes received is kept) and, with trickle, written a byte
// every trickle until it ends.
func upstream(t *testing.T, trickle time.Duration) (addr string, got *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	got = new(atomic.Int64)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if trickle > 0 {
					go func() {
						tk := time.NewTicker(trickle)
						defer tk.Stop()
						for range tk.C {
							if _, err := c.Write([]byte{'.'}); err != nil {
								return
							}
						}
					}()
				}
				n, _ := io.Copy(io.Discard, c)
				got.Add(n)
			}()
		}
	}()
	return ln.Addr().String(), got
}

// ended reports when c's reads end (EOF or error); what they read is
// dropped.
func ended(c net.Conn) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(io.Discard, c)
	}()
	return done
}

// TestGatewayIdleTimeout: a tunnel that carries no byte either way is
// closed after IdleTimeout and its slot freed; a tunnel trickling bytes
// in one direction only, more often than IdleTimeout, stays open past it
// (either direction). Before IdleTimeout the idle tunnel held its slot
// for good (the first wait below timed out).
func TestGatewayIdleTimeout(t *testing.T) {
	const idle = 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	t.Run("idle", func(t *testing.T) {
		sink, _ := upstream(t, 0)
		set := metrics.NewSet()
		_, gw := startGateway(t, Config{Allow: []string{sink}, MaxConns: 1, IdleTimeout: idle, Metrics: set})
		n := Network{Gateway: gw, Via: []string{sink}}
		c, err := n.Dial(ctx, "tcp", sink)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		start := time.Now()
		select {
		case <-ended(c):
		case <-time.After(5 * time.Second):
			t.Fatal("an idle tunnel was still open 5s past its idle timeout")
		}
		if d := time.Since(start); d < idle*9/10 {
			t.Errorf("closed after %v, before the idle timeout %v", d, idle)
		}
		// Its slot is free: with MaxConns 1 another tunnel opens.
		testenv.WaitFor(t, 5*time.Second, "the idle tunnel's slot to free", func() bool {
			c2, err := n.Dial(ctx, "tcp", sink)
			if err != nil {
				return false
			}
			c2.Close()
			return true
		})
		if got := set.GetOrCreateCounter(`fogmesh_gateway_idle_closed_total`).Get(); got < 1 {
			t.Errorf("fogmesh_gateway_idle_closed_total %d, want ≥ 1", got)
		}
	})

	for _, dir := range []string{"node to upstream", "upstream to node"} {
		t.Run(dir, func(t *testing.T) {
			up := dir == "upstream to node"
			var trickle time.Duration
			if up {
				trickle = idle / 6
			}
			sink, got := upstream(t, trickle)
			_, gw := startGateway(t, Config{Allow: []string{sink}, IdleTimeout: idle})
			n := Network{Gateway: gw, Via: []string{sink}}
			c, err := n.Dial(ctx, "tcp", sink)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			end := ended(c)
			// Trickle (or let the upstream trickle) for 4 idle timeouts.
			var sent int64
			tk := time.NewTicker(idle / 6)
			defer tk.Stop()
			stop := time.After(4 * idle)
		trickling:
			for {
				select {
				case <-end:
					t.Fatalf("a tunnel moving a byte every %v was closed by the idle timeout %v", idle/6, idle)
				case <-stop:
					break trickling
				case <-tk.C:
					if !up {
						if _, err := c.Write([]byte{'.'}); err != nil {
							t.Fatalf("write: %v", err)
						}
						sent++
					}
				}
			}
			if !up {
				// Still open: what it sent arrives, then it can still send.
				if _, err := c.Write([]byte{'!'}); err != nil {
					t.Fatalf("write after 4 idle timeouts: %v", err)
				}
				cw, ok := c.(interface{ CloseWrite() error })
				if !ok {
					t.Fatalf("%T cannot half-close", c)
				}
				cw.CloseWrite()
				testenv.WaitFor(t, 5*time.Second, "the upstream to get every byte", func() bool { return got.Load() == sent+1 })
			}
		})
	}
}
