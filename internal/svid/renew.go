package svid

import (
	"crypto/x509"
	"math/rand/v2"
	"time"

	"github.com/fogmesh/fogmesh/internal/identity"
)

// NodeRenewAt is when a node certificate should be renewed: at 45–50 % of
// its lifetime counted from issue (NotBefore is backdated by
// identity.ClockSkew), jittered so nodes that joined together do not all
// renew at once, and never later than half its life: a connected node
// always holds at least half a node TTL (84 h of the default week), so a
// cut of the 72 h autonomy window never outlives its certificate.
func NodeRenewAt(c *x509.Certificate) time.Time {
	issued := c.NotBefore.Add(identity.ClockSkew)
	life := c.NotAfter.Sub(issued)
	return issued.Add(life/2 - rand.N(life/20+1))
}

// workloadRenewAt is when a workload SVID should be renewed: at 45–55 % of
// its lifetime, as SPIRE does, so a control plane outage shorter than half
// a lifetime goes unnoticed.
func workloadRenewAt(leaf *x509.Certificate) time.Time {
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	return leaf.NotBefore.Add(time.Duration(float64(life) * (0.45 + 0.1*rand.Float64())))
}

// batchRenewAt is when a batch of workload SVIDs spanning issued to end
// should be replaced: after a ninth of its span, jittered down to an
// eighteenth. The control plane makes a batch span its autonomy window and
// a ninth more, so a connected agent always holds the whole window.
func batchRenewAt(issued, end time.Time) time.Time {
	span := end.Sub(issued)
	return issued.Add(span/9 - rand.N(span/18+1))
}
