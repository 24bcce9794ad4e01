package transport

import (
	"slices"
	"testing"
	"time"
)

// TestQUICIdlePeersPruned: as TestIdlePeersPruned for the QUIC client
// (the mesh over punched and UDP-relayed paths, whose peers' addresses
// change with every NAT mapping): peers that went away are forgotten once
// idle past the bound, the peer with a live connection is kept, and Close
// still reaches every connection (it waits for their watchers).
func TestQUICIdlePeersPruned(t *testing.T) {
	p := newQUICPair(t)
	d := mapDialer{"echo": serveWorkload(t, "127.0.0.1:0", echo)}
	up := startQUICServer(t, nil, p.srvSrc, d, nil)
	c, _ := quicClient(t, p.cli, "node-a", nil)
	c.SetPeerIdleForTest(time.Second) // longer than the dials below take, even under -race
	dial := func(addr string) {
		t.Helper()
		conn, err := c.Dial(t.Context(), addr, header("echo"))
		if err != nil {
			t.Fatalf("dial %s: %v", addr, err)
		}
		roundTrip(t, conn, "hello")
		conn.Close()
	}

	const n = 6
	for range n {
		gone := startQUICServer(t, nil, p.srvSrc, d, nil)
		dial(gone.addr)
		c.DropSession(gone.addr) // the peer went away: its connection is gone
		gone.stop(t)
	}
	dial(up.addr)
	if peers := c.PeersForTest(); len(peers) != n+1 {
		t.Fatalf("%d peers before the bound passed, want %d", len(peers), n+1)
	}
	eventually(t, "only the peer still up to be kept", func() bool {
		dial(up.addr)
		return slices.Equal(c.PeersForTest(), []string{up.addr})
	})
	if !c.Alive(up.addr) {
		t.Fatal("the kept peer lost its connection")
	}
	done := make(chan struct{})
	go func() { c.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("QUICClient.Close waits: a connection outlived its peer")
	}
}
