package control

import (
	"context"
	"net"
	"testing"
	"time"
)

// TestCloseBeforeServeClosesListeners: Close before Serve (and Serve after
// it, which serves nothing) leaves neither port open. Before, only
// admin.Serve closed the admin listener (http.Server's Shutdown closes only
// the listeners it serves): the admin port stayed bound, accepting into its
// backlog with nothing to answer.
func TestCloseBeforeServeClosesListeners(t *testing.T) {
	s, err := New(Config{StateDir: t.TempDir(), AdminAddr: "127.62.0.1:0", SyncAddr: "127.62.0.1:0", Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	admin, sync := s.AdminAddr(), s.SyncAddr()
	s.Close()
	if err := s.Serve(context.Background()); err != nil {
		t.Errorf("Serve after Close: %v", err)
	}
	for name, addr := range map[string]string{"admin": admin, "sync": sync} {
		if c, err := net.DialTimeout("tcp", addr, 5*time.Second); err == nil {
			c.Close()
			t.Errorf("the %s port %s still accepts connections after Close", name, addr)
		}
	}
}
