package relay

import (
	"bytes"
	"io"
	"math/rand/v2"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fogmesh/fogmesh/internal/transport"
)

// TestUDPChannelQUICBatches: QUIC on a UDP channel (through
// transport.NewQUICTransport, as the path manager runs it) sends its bulk
// data in batches, several sealed datagrams per socket write (GSO), and
// the bytes arrive intact both ways. On a plain net.PacketConn quic-go
// writes one datagram per syscall (a ratio of 1). The relay forwards in
// batches too, and the channel sockets read with UDP_GRO.
func TestUDPChannelQUICBatches(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.BytesPerSecond = -1 })
	x := f.node("site-a", "x")
	y := f.node("site-b", "y")
	cx, cy := bindPair(t, x, y)
	qx := startQUICOver(t, x.src, cx, newEchoWorkloads(t, net.Listen, (&net.Dialer{}).DialContext))
	startQUICOver(t, y.src, cy, newEchoWorkloads(t, net.Listen, (&net.Dialer{}).DialContext))

	conn, err := qx.cli.Dial(ctx20(t), cx.PeerAddr().String(), transport.Header{Namespace: "default", Service: "echo", Endpoint: "e1", Port: "tcp"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	msg := make([]byte, 4<<20)
	r := rand.NewChaCha8([32]byte{7})
	r.Read(msg)
	w0, d0 := cx.Sent()
	rw0, rd0 := f.metric("fogmesh_relay_udp_socket_writes_total"), f.metric("fogmesh_relay_udp_datagrams_sent_total")
	sent := make(chan error, 1)
	go func() { _, err := conn.Write(msg); sent <- err }()
	conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(conn, got); err != nil {
		t.Fatal(err)
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatal("the echo came back changed")
	}
	w1, d1 := cx.Sent()
	writes, dgrams := w1-w0, d1-d0
	ratio := float64(dgrams) / float64(max(writes, 1))
	t.Logf("x sent %d datagrams in %d socket writes (%.1f per write); dropped x %d, y %d", dgrams, writes, ratio, cx.Dropped(), cy.Dropped())
	if ratio < 1.5 {
		t.Fatalf("%.2f datagrams per socket write: QUIC on the channel does not batch", ratio)
	}
	rw, rd := f.metric("fogmesh_relay_udp_socket_writes_total")-rw0, f.metric("fogmesh_relay_udp_datagrams_sent_total")-rd0
	rratio := rd / max(rw, 1)
	t.Logf("the relay sent %.0f datagrams in %.0f socket writes (%.1f per write)", rd, rw, rratio)
	// The channel's GSO bursts reach the relay's socket together, so its
	// batched reads see several and forward them as one write.
	if rratio < 1.2 {
		t.Fatalf("the relay sent %.2f datagrams per socket write: it does not batch", rratio)
	}
	// And the receiving side reads such a write as one datagram (UDP_GRO),
	// split into QUIC packets by ReadBatch.
	for _, ch := range []*UDPChannel{cx, cy} {
		if got := sockopt(t, ch.pc.(*net.UDPConn), unix.SOL_UDP, unix.UDP_GRO); got != 1 {
			t.Errorf("channel socket UDP_GRO = %d, want 1", got)
		}
	}
}
