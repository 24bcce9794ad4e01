package transport

import (
	"context"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/fogmesh/fogmesh/internal/identity"
)

// TestQUICClientTakesNoStreams: the peer a QUICClient dials serves mesh
// streams and opens none toward the client (its own go over the
// connection it dials itself), and the client never accepts a stream on
// the connections it dials. A peer allowed to open streams there anyway
// could park up to the connection window (64 MiB) in buffers no one reads,
// for the connection's life; the client now allows none, as the yamux
// client closes a session whose peer opens one (refuseStreams).
func TestQUICClientTakesNoStreams(t *testing.T) {
	p := newQUICPair(t)
	tr := udpTransport(t)
	tlsConf, err := quicTLS(p.srvSrc.ServerConfig(identity.AuthorizeNode(), identity.ALPNMesh), newMeshMetrics(nil, "in"))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tr.Listen(tlsConf, quicConfig(QUICTimers{KeepAlive: DefaultQUICKeepAlive, IdleTimeout: DefaultQUICIdleTimeout}, 3*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	opened := make(chan error, 1)
	go func() { // a hostile peer: it answers, and opens a stream of its own
		conn, err := ln.Accept(context.Background())
		if err != nil {
			opened <- err
			return
		}
		defer conn.CloseWithError(0, "")
		st, err := conn.AcceptStream(context.Background())
		if err != nil {
			opened <- err
			return
		}
		if _, err := ReadHeader(st); err == nil {
			WriteStatus(st, StatusOK, "")
		}
		_, err = conn.OpenStream()
		opened <- err
		<-conn.Context().Done()
	}()

	c, _ := quicClient(t, p.cli, "node-a", nil)
	conn, err := c.Dial(t.Context(), tr.Conn.LocalAddr().String(), header("web-1"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	select {
	case err := <-opened:
		// quic-go's StreamLimitReachedError, wrapped without Unwrap.
		if err == nil || err.Error() != (quic.StreamLimitReachedError{}).Error() {
			t.Fatalf("the peer opened a stream on the client's connection: %v; want StreamLimitReachedError", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the peer's open neither failed nor succeeded")
	}
}
