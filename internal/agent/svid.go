package agent

import (
	"github.com/fogmesh/fogmesh/internal/svid"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// SVIDIssuer signs workload certificate requests (see svid.Issuer).
type SVIDIssuer = svid.Issuer

// Attest selects the local processes that may fetch a workload's SVID and
// use its identity as local clients (see svid.Attest).
type Attest = svid.Attest

// syncIssuer is svid.SyncIssuer with the names the sync loop calls.
type syncIssuer struct{ *svid.SyncIssuer }

func newSyncIssuer() *syncIssuer { return &syncIssuer{svid.NewSyncIssuer()} }

func (s *syncIssuer) connected(write func(*wire.Message) error, batch bool) {
	s.Connected(write, batch)
}
func (s *syncIssuer) answer(m *wire.Message) { s.Answer(m) }

// svidHolders lists the local workloads for the SVID store (the service
// name is the default service account).
func svidHolders(ws map[string]*workloadState) []svid.Holder {
	out := make([]svid.Holder, 0, len(ws))
	for _, st := range ws {
		sa := st.w.ServiceAccount
		if sa == "" {
			sa = st.w.Service
		}
		out = append(out, svid.Holder{Namespace: st.w.Namespace, ServiceAccount: sa, Attest: st.w.Attest})
	}
	return out
}
