package control

import (
	"fmt"
	"time"

	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// DefaultAutonomyWindow is how long a site cut off from every control
// plane keeps serving by default: the 72 hours issue 13 asks for.
const DefaultAutonomyWindow = 72 * time.Hour

// validateLifetimes fills the certificate lifetimes' defaults and checks
// that they allow the autonomy window (docs/offline.md): a node
// certificate renewed at half its life outlasts the window, and a batch
// of workload SVIDs covering the window and a ninth more fits
// wire.MaxSVIDBatch.
func (c *Config) validateLifetimes() error {
	if c.NodeTTL < 0 || c.WorkloadTTL < 0 || c.AutonomyWindow < 0 || c.RotationOverlap < 0 {
		return fmt.Errorf("control: negative certificate lifetime or autonomy window")
	}
	if c.Insecure {
		return nil
	}
	if c.NodeTTL == 0 {
		c.NodeTTL = identity.DefaultNodeTTL
	}
	if c.WorkloadTTL == 0 {
		c.WorkloadTTL = identity.DefaultWorkloadTTL
	}
	if c.AutonomyWindow == 0 {
		c.AutonomyWindow = min(DefaultAutonomyWindow, c.NodeTTL/2)
	}
	if c.WorkloadTTL < 2*time.Second { // certificate times are whole seconds
		return fmt.Errorf("control: workloadTTL %s is below 2s", c.WorkloadTTL)
	}
	if c.AutonomyWindow > c.NodeTTL/2 {
		return fmt.Errorf("control: autonomyWindow %s exceeds half the nodeTTL %s: a node certificate renewed at half its life would expire inside the window; raise nodeTTL to at least %s",
			c.AutonomyWindow, c.NodeTTL, 2*c.AutonomyWindow)
	}
	if n := identity.WorkloadBatchSize(c.WorkloadTTL, batchWindow(c.AutonomyWindow)); n > wire.MaxSVIDBatch {
		return fmt.Errorf("control: workloadTTL %s is too short for autonomyWindow %s: a batch would hold %d SVIDs, at most %d",
			c.WorkloadTTL, c.AutonomyWindow, n, wire.MaxSVIDBatch)
	}
	return nil
}

// batchWindow is what a batch of workload SVIDs covers: the autonomy
// window and a ninth more, which an agent uses up before it asks for the
// next batch (svid's batchRenewAt), so a connected agent always holds the
// whole window.
func batchWindow(w time.Duration) time.Duration { return w + w/8 }
