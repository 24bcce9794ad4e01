package agent

import (
	"context"
	"net"
	"net/http"
	"net/netip"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/transport"
)

// Who the source of a connection or request is: the local client's
// identity, found at accept from its address (and attest selectors), and
// on the destination side the identity a peer node claims, accepted only
// as far as that node may vouch for it (vouch).

// localIdentities maps the addresses of this node's workloads to their
// SPIFFE IDs. An address shared by workloads of different identities maps
// to "" (unknown): the agent cannot tell them apart.
func localIdentities(td string, local []api.Endpoint) map[netip.Addr]string {
	ids := map[netip.Addr]string{}
	for i := range local {
		addr, err := netip.ParseAddr(local[i].Spec.Address)
		if err != nil {
			continue
		}
		id := api.EndpointID(td, &local[i])
		if old, ok := ids[addr.Unmap()]; ok && old != id {
			id = ""
		}
		ids[addr.Unmap()] = id
	}
	return ids
}

// clientIdentity is the SPIFFE ID of the local workload a client connection
// comes from, or "" when unknown: the workload registered at its source
// address, and if that workload declares attest selectors, only when the
// process holding the client socket matches them (localid.go). It is what
// the source agent claims in Header.SourceID and SourceIDHeader; it is
// computed once per connection, at accept.
func (a *Agent) clientIdentity(c net.Conn) string {
	remote, ok1 := tcpAddrPort(c.RemoteAddr())
	local, ok2 := tcpAddrPort(c.LocalAddr())
	if !ok1 || !ok2 {
		return ""
	}
	v := a.view.Load() // one view: the address's identity and its selectors agree
	return a.attestedIdentity(v, identityOf(v, remote.Addr()), remote, local)
}

func identityOf(v *view, addr netip.Addr) string {
	id := v.ids[addr.Unmap()]
	if len(id) > transport.MaxFieldLen {
		return ""
	}
	return id
}

// vouch is the source identity the destination agent accepts for a mesh
// stream or request: the source node is h.Source, which the mesh server has
// already checked against the TLS peer certificate (secure mode). The
// claimed workload identity is accepted from a node of this trust domain
// only if an endpoint of that node has it (a node may speak for its own
// workloads, no others), and from a node of a federated trust domain only
// for that domain's identities (the foreign mesh vouches for its own).
// Anything else becomes "" (unknown), which no principal rule matches, and
// is counted. In insecure mode both are taken as claimed. ctx is the mesh
// stream's (transport.PeerFromContext). A scoped agent that does not hold
// the claimed identity's namespace asks for it first (learnCaller, up to
// scopeWait).
func (a *Agent) vouch(ctx context.Context, h transport.Header, claimed string) (sourceID, sourceNode string) {
	if a.ident == nil {
		return claimed, h.Source
	}
	if p, ok := transport.PeerFromContext(ctx); ok && p.ID.TrustDomain() != a.ident.td {
		// A node of a federated trust domain is not one of this domain's
		// nodes, whatever its name: it is named by its full ID (node rules
		// naming a local node do not match it) and vouched for its own
		// domain's identities only.
		node := p.ID.String()
		if claimed == "" {
			return "", node
		}
		if id, err := spiffeid.FromString(claimed); err == nil && id.TrustDomain() == p.ID.TrustDomain() {
			return claimed, node
		}
		a.m.unvouched.Inc()
		a.log.Warn("agent: source identity not vouched for by its node; treated as unknown", "node", node, "claimed", claimed)
		return "", node
	}
	if claimed == "" {
		return claimed, h.Source
	}
	if a.view.Load().nodeIDs[h.Source][claimed] {
		return claimed, h.Source
	}
	// A scoped agent holds the endpoints of its scope only: it learns the
	// claimed identity's namespace, then checks the claim the same way.
	if a.learnCaller(ctx, h.Source, claimed) {
		return claimed, h.Source
	}
	a.m.unvouched.Inc()
	a.log.Warn("agent: source identity not vouched for by its node; treated as unknown", "node", h.Source, "claimed", claimed)
	return "", h.Source
}

type sourceIDKey struct{}

// withClientIdentity makes dialEndpoint send id as the stream's sourceId.
// Only per-connection (L4) dials carry it: pooled L7 connections serve
// many clients and carry SourceIDHeader per request instead.
func withClientIdentity(ctx context.Context, id string) context.Context {
	if id == "" {
		return ctx
	}
	return context.WithValue(ctx, sourceIDKey{}, id)
}

func clientIdentityFrom(ctx context.Context) string {
	id, _ := ctx.Value(sourceIDKey{}).(string)
	return id
}

// setSourceIdentity is the L7 path's hook on every outgoing request: it
// replaces whatever SourceIDHeader the client sent with the identity of the
// client's connection, found at accept (clientIdentity; ctx is the
// connection's), or removes it when unknown.
func (a *Agent) setSourceIdentity(ctx context.Context, out *http.Request) {
	a.setSourceIdentityIn(ctx, out, nil)
}

// setSourceIdentityIn is setSourceIdentity with the header's value slice
// in dst (nil: a new one), which the caller keeps with the request.
func (a *Agent) setSourceIdentityIn(ctx context.Context, out *http.Request, dst *[1]string) {
	out.Header.Del(SourceIDHeader)
	if id := connIdentityFrom(ctx); id != "" {
		if dst == nil {
			dst = new([1]string)
		}
		dst[0] = id
		out.Header[SourceIDHeader] = dst[:] // the name is canonical, as Set would make it
	}
}
