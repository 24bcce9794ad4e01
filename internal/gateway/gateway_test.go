package gateway

import (
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/fogmesh/fogmesh/internal/testenv"
)

// echo serves an echo on loopback and returns its address.
func echo(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return ln.Addr().String()
}

func startGateway(t *testing.T, cfg Config) (*Server, string) {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s, ln.Addr().String()
}

func roundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
		t.Fatalf("echo %q, %v; want %q", got, err, msg)
	}
}

// TestGatewayForwardsOnlyAllowed: a node reaches an allowed address
// through the gateway, byte for byte both ways; another address, a
// request that is not CONNECT, and hostile bytes are refused with no
// crash; the gateway counts what it did.
func TestGatewayForwardsOnlyAllowed(t *testing.T) {
	allowed, other := echo(t), echo(t)
	set := metrics.NewSet()
	_, gw := startGateway(t, Config{Allow: []string{allowed}, Metrics: set})
	n := Network{Gateway: gw, Via: []string{allowed, other}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := n.Dial(ctx, "tcp", allowed)
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, c, "through the gateway")
	if c.RemoteAddr().String() != gw {
		t.Errorf("connected to %s, want the gateway %s", c.RemoteAddr(), gw)
	}
	c.Close()

	if _, err := n.Dial(ctx, "tcp", other); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("dial of an address the gateway does not allow: %v, want 403", err)
	}
	// Not through the gateway: an address outside Via is dialed directly.
	direct := echo(t)
	c, err = n.Dial(ctx, "tcp", direct)
	if err != nil {
		t.Fatal(err)
	}
	if c.RemoteAddr().String() != direct {
		t.Errorf("dialed %s, want %s directly", c.RemoteAddr(), direct)
	}
	c.Close()

	for _, raw := range []string{
		"GET / HTTP/1.1\r\nHost: " + allowed + "\r\n\r\n",
		"CONNECT " + other + " HTTP/1.1\r\nHost: " + other + "\r\n\r\n",
		"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
		"CONNECT " + strings.Repeat("a", 70000) + ":1 HTTP/1.1\r\n\r\n",
	} {
		c, err := net.Dial("tcp", gw)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, raw)
		b, _ := io.ReadAll(c)
		c.Close()
		if strings.HasPrefix(string(b), "HTTP/1.1 200") {
			t.Errorf("%.40q was forwarded", raw)
		}
	}
	if got := set.GetOrCreateCounter(`fogmesh_gateway_connections_total`).Get(); got != 1 {
		t.Errorf("forwarded %d connections, want 1", got)
	}
	if got := set.GetOrCreateCounter(`fogmesh_gateway_refused_total`).Get(); got < 3 {
		t.Errorf("refused %d, want at least 3", got)
	}
}

// TestGatewayBounds: past MaxConns a CONNECT is refused (503) until a
// forwarded connection ends; Close ends the forwarded ones.
func TestGatewayBounds(t *testing.T) {
	allowed := echo(t)
	s, gw := startGateway(t, Config{Allow: []string{allowed}, MaxConns: 1})
	n := Network{Gateway: gw, Via: []string{allowed}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c1, err := n.Dial(ctx, "tcp", allowed)
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, c1, "one")
	if _, err := n.Dial(ctx, "tcp", allowed); err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("second connection over MaxConns 1: %v, want 503", err)
	}
	c1.Close()
	var c2 net.Conn
	testenv.WaitFor(t, 5*time.Second, "the slot to free", func() bool {
		c2, err = n.Dial(ctx, "tcp", allowed)
		return err == nil
	})
	roundTrip(t, c2, "two")
	s.Close()
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c2.Read(make([]byte, 1)); err == nil {
		t.Fatal("a forwarded connection outlived Close")
	}
}

func TestGatewayConfig(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Error("no allowed address: accepted")
	}
	if _, err := New(Config{Allow: []string{"no-port"}}); err == nil {
		t.Error("bad address: accepted")
	}
}

// TestGatewayPerClientBound: one client address cannot take more than
// MaxConnsPerClient slots, though the gateway has more.
func TestGatewayPerClientBound(t *testing.T) {
	allowed := echo(t)
	_, gw := startGateway(t, Config{Allow: []string{allowed}, MaxConns: 10, MaxConnsPerClient: 1})
	n := Network{Gateway: gw, Via: []string{allowed}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c1, err := n.Dial(ctx, "tcp", allowed)
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	roundTrip(t, c1, "one")
	if _, err := n.Dial(ctx, "tcp", allowed); err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("second connection from one client over its bound: %v, want 503", err)
	}
}
