package agent

import (
	"context"
	"net"
	"net/netip"
	"time"

	"github.com/fogmesh/fogmesh/internal/sockowner"
	"github.com/fogmesh/fogmesh/internal/workloadapi"
)

// Local client identity. A client connection from this host gets the
// identity of the workload registered at its source address (authz.go,
// localIdentities). Any local process can bind that address, so where the
// workload declares attest selectors (the ones that guard its SVID on the
// Workload API socket) the address only names the candidate: the agent
// asks the kernel which processes hold the client socket (package
// sockowner) and grants the identity only if they match. The answer is
// computed once per connection, at accept, and travels with it.
//
// Metrics:
//
//	fogmesh_agent_local_identity_attested_total                 connections whose owner matched
//	fogmesh_agent_local_identity_refused_total{reason}          reason: mismatch (owner found, selectors not met), unknown_owner (not determinable: non-Linux, gone, no permission)

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

// ownerMatches reports whether the processes holding a client socket are
// all described by one of the selectors: a process that execs an allowed
// binary while keeping a copy of the socket does not pass. A uid selector
// must also match the socket's creator.
func ownerMatches(ats []*Attest, o sockowner.Owner) bool {
	if len(o.Procs) == 0 {
		return false
	}
	for _, at := range ats {
		if at.UID != nil && uint32(*at.UID) != o.UID {
			continue
		}
		all := true
		for _, p := range o.Procs {
			if !at.Matches(workloadapi.Caller{PID: p.PID, UID: p.UID, GID: p.GID, Exe: p.Exe, Known: true}) {
				all = false
				break
			}
		}
		if all {
			return true
		}
	}
	return false
}

// attestedIdentity is id (the identity of the workload at the client's
// address) if the workload declares no attest selectors or the socket's
// owner matches them, else "" (unknown), logged and counted.
func (a *Agent) attestedIdentity(v *view, id string, remote, local netip.AddrPort) string {
	ats := v.attest[remote.Addr().Unmap()]
	if id == "" || len(ats) == 0 {
		return id
	}
	start := time.Now()
	o, err := sockowner.Find(remote, local)
	if err == nil && !uidPossible(ats, o.UID) {
		// Refused on the socket's creator alone: no /proc scan, so a
		// flood of impostor connections costs one netlink query each.
		a.cfg.Metrics.GetOrCreateCounter(`fogmesh_agent_local_identity_refused_total{reason="mismatch"}`).Inc()
		a.log.Warn("agent: local client does not match the attest selectors of its address's workload; treated as unknown",
			"client", remote, "identity", id, "socket_uid", o.UID)
		return ""
	}
	if err == nil {
		o.Procs, err = sockowner.Holders(o.Inode)
	}
	took := time.Since(start)
	switch {
	case err != nil || len(o.Procs) == 0:
		a.cfg.Metrics.GetOrCreateCounter(`fogmesh_agent_local_identity_refused_total{reason="unknown_owner"}`).Inc()
		a.log.Warn("agent: local client's process unknown; its address's attested identity is not granted",
			"client", remote, "identity", id, "err", err, "took", took)
		return ""
	case !ownerMatches(ats, o):
		a.cfg.Metrics.GetOrCreateCounter(`fogmesh_agent_local_identity_refused_total{reason="mismatch"}`).Inc()
		p := o.Procs[0]
		a.log.Warn("agent: local client does not match the attest selectors of its address's workload; treated as unknown",
			"client", remote, "identity", id, "socket_uid", o.UID, "pid", p.PID, "uid", p.UID, "gid", p.GID, "exe", p.Exe,
			"holders", len(o.Procs))
		return ""
	}
	a.cfg.Metrics.GetOrCreateCounter(`fogmesh_agent_local_identity_attested_total`).Inc()
	a.log.Debug("agent: local client attested", "client", remote, "identity", id, "pid", o.Procs[0].PID, "took", took)
	return id
}

// uidPossible reports whether a socket created by uid can pass one of
// the selectors (ownerMatches then checks its processes).
func uidPossible(ats []*Attest, uid uint32) bool {
	for _, at := range ats {
		if at.UID == nil || uint32(*at.UID) == uid {
			return true
		}
	}
	return false
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
