package punch

import (
	"net/netip"
	"time"
)

// Bounds of the probes one introduction makes a node send. An introduction
// names up to relay.MaxCandidates addresses the introduced node chose; the
// answering node probes them, so without bounds a registered node could
// turn every introduction into thousands of datagrams at addresses of its
// choosing (reflection).
const (
	// maxUnanswered is how many probes a candidate gets before it is
	// given up while nothing came from it; the pause after each doubles
	// once probeBurst were sent.
	maxUnanswered = 8
	probeBurst    = 3
	// maxProbesPerPunch bounds one introduction's probes, whatever the
	// candidates.
	maxProbesPerPunch = 160
	// maxProbesPerSecond bounds the probes of all punches of a socket
	// (keepalives of punched paths aside).
	maxProbesPerSecond = 512
)

// candidate is one address of the peer's and its probing schedule.
type candidate struct {
	addr       netip.AddrPort
	unanswered int       // probes sent since anything came from it
	heard      bool      // a valid probe of the peer's came from it
	next       time.Time // earliest time of its next probe
}

// due reports whether c gets a probe at now: every round once the peer
// was heard from it, otherwise maxUnanswered probes with backoff.
func (c *candidate) due(now time.Time) bool {
	return c.heard || (c.unanswered < maxUnanswered && !now.Before(c.next))
}

// probed records a probe sent at now; interval is the base pause.
func (c *candidate) probed(now time.Time, interval time.Duration) {
	if c.heard {
		return
	}
	c.unanswered++
	gap := interval
	if k := c.unanswered - probeBurst; k > 0 {
		gap <<= k
	}
	c.next = now.Add(gap)
}

// rateBudget counts probes per one-second window.
type rateBudget struct {
	start time.Time
	used  int
}

// take reports whether one more probe fits into the window of now.
func (b *rateBudget) take(now time.Time, limit int) bool {
	if now.Sub(b.start) >= time.Second || now.Before(b.start) {
		b.start, b.used = now, 0
	}
	if b.used >= limit {
		return false
	}
	b.used++
	return true
}

// refuseCandidate says why an introduced address is not probed ("": it
// is), given the address the socket is bound to. Unspecified, multicast
// and broadcast addresses never are; loopback and link-local ones only
// from a socket bound to such an address (a node reaches those only on its
// own host or link, and Gather never offers them from a socket bound to
// all addresses). Private addresses are: a peer on the same LAN is one.
func refuseCandidate(a, bound netip.Addr) string {
	switch {
	case !a.IsValid() || a.IsUnspecified():
		return "unspecified"
	case a.IsMulticast() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "multicast"
	case a.IsLoopback() && !bound.IsLoopback():
		return "loopback"
	case (a.IsLinkLocalUnicast() || a.IsInterfaceLocalMulticast()) && !bound.IsLinkLocalUnicast():
		return "link_local"
	}
	return ""
}
