package transport

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/identity"
)

// TestExpiryCutDoneBeforeClose: a session's expiry cut runs on a timer
// (time.AfterFunc); the connection's goroutine only stopped the timer
// when it ended, and Stop does not wait for a callback that has begun, so
// Close could return while a cut was still running: its log line, its
// count and OnCut (the agent's audit record, whose log the agent closes
// after the mesh) came after Close. Close now returns only after the cut.
// Both carriers: the QUIC server and the TLS one.
func TestExpiryCutDoneBeforeClose(t *testing.T) {
	root := testCA(t, "", nil)
	work := serveWorkload(t, "127.0.0.1:0", echo)
	srvSrc := testSource(testSVID(t, root, "s", "node-b"), root.Bundle())
	for _, carrier := range []string{"quic", "tls"} {
		t.Run(carrier, func(t *testing.T) {
			short := regionalCA(t, root, "brief", 2*time.Second)
			cliSrc := testSource(testSVID(t, short, "s", "node-e"), root.Bundle())
			// OnCut holds the cut until released.
			entered, release := make(chan struct{}), make(chan struct{})
			var once sync.Once
			var finished atomic.Bool
			onCut := func(Cut) {
				once.Do(func() { close(entered) })
				<-release
				finished.Store(true)
			}
			var closeServer func() error
			var dial func() error
			switch carrier {
			case "quic":
				ts := startQUICServer(t, nil, srvSrc, mapDialer{"web-1": work}, func(c *QUICServerConfig) {
					c.PeerCheck, c.OnCut = srvSrc.CheckPeer, onCut
				})
				c, _ := quicClient(t, cliSrc, "node-e", nil)
				closeServer = ts.Close
				dial = func() error {
					conn, err := c.Dial(context.Background(), ts.addr, header("web-1"))
					if err == nil {
						t.Cleanup(func() { conn.Close() })
						roundTrip(t, conn, "hello")
					}
					return err
				}
			case "tls":
				ts := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{"web-1": work}, func(c *ServerConfig) {
					c.TLS = srvSrc.ServerConfig(identity.AuthorizeNode(), identity.ALPNMesh)
					c.PeerCheck, c.OnCut = srvSrc.CheckPeer, onCut
				})
				c, _ := cutClient(t, cliSrc, "node-e")
				closeServer = ts.Close
				dial = func() error {
					conn, err := c.Dial(context.Background(), ts.addr, header("web-1"))
					if err == nil {
						t.Cleanup(func() { conn.Close() })
						roundTrip(t, conn, "hello")
					}
					return err
				}
			}
			if err := dial(); err != nil {
				t.Fatal(err)
			}
			notAfter := cliSrc.SVID().Certificates[1].NotAfter
			select {
			case <-entered:
			case <-time.After(time.Until(notAfter) + cutBound):
				close(release)
				t.Fatalf("no expiry cut %v after the peer's expiry at %s", cutBound, notAfter)
			}
			var doneAtClose bool
			closed := make(chan struct{})
			go func() {
				closeServer()
				doneAtClose = finished.Load()
				close(closed)
			}()
			// Close now waits for the cut: it is released after a second
			// (or once Close returned, which it did before, at once).
			select {
			case <-closed:
			case <-time.After(time.Second):
			}
			close(release)
			select {
			case <-closed:
			case <-time.After(10 * time.Second):
				t.Fatal("Close did not return after the cut did")
			}
			if !doneAtClose {
				t.Fatal("Close returned while the session's expiry cut was still running (its OnCut had not returned)")
			}
		})
	}
}
