package identity

import (
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// MaxWorkloadBatch bounds SignWorkloadBatch (wire.MaxSVIDBatch).
const MaxWorkloadBatch = 1024

// WorkloadBatchSize is how many certificates SignWorkloadBatch issues to
// cover window with lifetime ttl: one starting now and one every ttl/2
// after it until one starts at or after the window's end, so at any moment
// of the window one of them has at least half its life left.
func WorkloadBatchSize(ttl, window time.Duration) int {
	step := batchStep(ttl)
	return int((window+step-1)/step) + 1
}

// batchStep is half of ttl in whole seconds (at least one): certificate
// times have a resolution of one second.
func batchStep(ttl time.Duration) time.Duration {
	return max(time.Second, (ttl / 2).Truncate(time.Second))
}

// SignWorkloadBatch issues consecutive workload X.509-SVIDs for one key
// (the CSR's): certificate i is valid from now (to the second) + i·ttl/2
// (in whole seconds; backdated by ClockSkew) for ttl, covering now to now + window + ttl (or the issuer's
// expiry, whichever comes first). The agent serves the one whose window
// covers the present, so a node cut off from every control plane keeps
// valid workload SVIDs for window, while a stolen certificate is valid for
// ttl at most and the node holds no signing key. ttl 0 means the
// configured WorkloadTTL. The caller must have checked that the node may
// hold this identity, as for SignWorkloadCSR.
func (ca *CA) SignWorkloadBatch(csr *x509.CertificateRequest, namespace, account string, ttl, window time.Duration) ([][]*x509.Certificate, error) {
	if ttl <= 0 {
		ttl = ca.cfg.WorkloadTTL
	}
	if window < 0 {
		return nil, errors.New("identity: negative autonomy window")
	}
	n := WorkloadBatchSize(ttl, window)
	if n < 1 || n > MaxWorkloadBatch {
		return nil, fmt.Errorf("identity: a batch for %s with %s certificates would hold %d of them, at most %d", window, ttl, n, MaxWorkloadBatch)
	}
	ca.mu.Lock()
	now, limit := ca.cfg.Now().Truncate(time.Second), ca.cert.NotAfter
	ca.mu.Unlock()
	step := batchStep(ttl)
	id, err := workloadID(ca, namespace, account)
	if err != nil {
		return nil, err
	}
	out := make([][]*x509.Certificate, 0, n)
	for i := range n {
		start := now.Add(time.Duration(i) * step)
		if i > 0 && !start.Before(limit) {
			break // the issuer expires first
		}
		chain, err := ca.Sign(csr.PublicKey, id, IssueOptions{TTL: ttl, Start: start})
		if err != nil {
			return nil, err
		}
		out = append(out, chain)
	}
	return out, nil
}
