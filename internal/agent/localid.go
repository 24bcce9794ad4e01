package agent

import (
	"context"
	"net"
	"net/netip"

	"github.com/fogmesh/fogmesh/internal/localid"
)

// Local client identity. A client connection from this host gets the
// identity of the workload registered at its source address (vouch.go,
// localIdentities), where the workload declares attest selectors only if
// the processes holding the client socket match them (package localid).
// The answer is computed once per connection, at accept, and travels with
// it.
//
// Metrics:
//
//	fogmesh_agent_local_identity_attested_total                 connections whose owner matched
//	fogmesh_agent_local_identity_refused_total{reason}          reason: mismatch (owner found, selectors not met), unmapped_id (a mismatch where the
//	                                                            client's uid or gid is one the agent's user namespace does not map), unknown_owner
//	                                                            (not determinable: non-Linux, gone, no permission)

// localAttestations maps the addresses of this node's workloads to the
// attest selectors the workloads there declare (none: identity by address
// alone).
func localAttestations(ws map[string]*workloadState) map[netip.Addr][]*Attest {
	out := map[netip.Addr][]*Attest{}
	for _, st := range ws {
		if st.w.Attest == nil {
			continue
		}
		addr, err := netip.ParseAddr(st.w.Address)
		if err != nil {
			continue
		}
		out[addr.Unmap()] = append(out[addr.Unmap()], st.w.Attest)
	}
	return out
}

// attestedIdentity is id (the identity of the workload at the client's
// address) if the workload declares no attest selectors or the socket's
// owner matches them, else "" (unknown), logged and counted.
func (a *Agent) attestedIdentity(v *view, id string, remote, local netip.AddrPort) string {
	ats := v.attest[remote.Addr().Unmap()]
	if id == "" || len(ats) == 0 {
		return id
	}
	r := localid.Check(ats, remote, local)
	o := r.Owner
	mismatch := `fogmesh_agent_local_identity_refused_total{reason="mismatch"}`
	if r.Unmapped {
		mismatch = `fogmesh_agent_local_identity_refused_total{reason="unmapped_id"}`
	}
	switch {
	case r.Verdict == localid.Mismatch && len(o.Procs) == 0:
		a.cfg.Metrics.GetOrCreateCounter(mismatch).Inc()
		a.log.Warn("agent: local client does not match the attest selectors of its address's workload; treated as unknown",
			"client", remote, "identity", id, "socket_uid", o.UID, "ids_unmapped", r.Unmapped)
		return ""
	case r.Verdict == localid.UnknownOwner:
		a.cfg.Metrics.GetOrCreateCounter(`fogmesh_agent_local_identity_refused_total{reason="unknown_owner"}`).Inc()
		a.log.Warn("agent: local client's process unknown; its address's attested identity is not granted",
			"client", remote, "identity", id, "err", r.Err, "took", r.Took)
		return ""
	case r.Verdict == localid.Mismatch:
		a.cfg.Metrics.GetOrCreateCounter(mismatch).Inc()
		p := o.Procs[0]
		a.log.Warn("agent: local client does not match the attest selectors of its address's workload; treated as unknown",
			"client", remote, "identity", id, "socket_uid", o.UID, "pid", p.PID, "uid", p.UID, "gid", p.GID, "exe", p.Exe,
			"holders", len(o.Procs), "ids_unmapped", r.Unmapped)
		return ""
	}
	a.cfg.Metrics.GetOrCreateCounter(`fogmesh_agent_local_identity_attested_total`).Inc()
	a.log.Debug("agent: local client attested", "client", remote, "identity", id, "pid", o.Procs[0].PID, "took", r.Took)
	return id
}

type connIdentityKey struct{}

// withConnIdentity tags an L7 client connection's context with the
// identity found when it was accepted (setSourceIdentity reads it).
func withConnIdentity(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, connIdentityKey{}, id)
}

func connIdentityFrom(ctx context.Context) string {
	id, _ := ctx.Value(connIdentityKey{}).(string)
	return id
}

func tcpAddrPort(addr net.Addr) (netip.AddrPort, bool) {
	if ta, ok := addr.(*net.TCPAddr); ok {
		return ta.AddrPort(), true
	}
	ap, err := netip.ParseAddrPort(addr.String())
	return ap, err == nil
}
