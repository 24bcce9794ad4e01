package control

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// TestAdminLockoutFromFourSources: four sources holding their per-source
// share of silent connections fill the admin API's gate; a client from
// another address is still served, in the place of the oldest silent
// connection of one of them (closed, counted as evicted), not refused as
// busy until the silent ones time out.
func TestAdminLockoutFromFourSources(t *testing.T) {
	s := startSecure(t)
	per := DefaultAdminMaxHandshakesPerSource
	var silent []*testenv.SilentConns
	for i := range DefaultAdminMaxHandshakes / per {
		silent = append(silent, testenv.DialSilent(t, per, fmt.Sprintf("127.68.0.%d", i+1), s.AdminAddr()))
	}
	testenv.WaitFor(t, 3*time.Second, "gate full", func() bool { return adminHandshakes(t, s) == DefaultAdminMaxHandshakes })
	c := adminHTTPFrom(t, s, "127.68.1.1")
	c.Timeout = 2 * time.Second
	req, _ := http.NewRequest(http.MethodGet, "https://"+s.AdminAddr()+"/healthz", nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("an admin from another address is locked out while %d silent conns are open: %v", DefaultAdminMaxHandshakes, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/healthz: %d", resp.StatusCode)
	}
	testenv.WaitFor(t, 3*time.Second, "one silent connection evicted", func() bool {
		return adminRefused(t, s, identity.ReasonEvicted) == 1
	})
	closed := 0
	for _, sc := range silent {
		closed += sc.ClosedByPeer()
		if sc.ClosedByPeer() == 1 && !sc.IsClosed(0) {
			t.Errorf("a silent connection other than its source's oldest was evicted")
		}
	}
	if closed != 1 || adminRefused(t, s, identity.ReasonBusy) != 0 {
		t.Fatalf("%d silent connections closed, %d refused as busy; want 1, 0", closed, adminRefused(t, s, identity.ReasonBusy))
	}
	// The served client's slot is free again; the silent ones still hold theirs.
	testenv.WaitFor(t, 3*time.Second, "slots", func() bool { return adminHandshakes(t, s) == DefaultAdminMaxHandshakes-1 })
}
