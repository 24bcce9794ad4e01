package agent

import (
	"fmt"
	"net"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/audit"
	"github.com/fogmesh/fogmesh/internal/gateway"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/paths"
	"github.com/fogmesh/fogmesh/internal/relay"
	"github.com/fogmesh/fogmesh/internal/transport"
)

// initMesh makes the agent's links to its peers: the path manager (direct,
// punched and relayed paths, over the relays of cfg), the mesh server on
// the mesh listener and the relayed sessions, and the site gateway when
// this agent is one.
func (a *Agent) initMesh(cfg Config) error {
	var err error
	pcfg := paths.Config{Self: cfg.Node.Name, Dialer: a, Network: cfg.Network, Logger: a.log.With("sub", "mesh"),
		Metrics: cfg.Metrics, PingInterval: time.Duration(cfg.MeshPingInterval), Relays: cfg.Relays,
		UDPAddr: cfg.PunchAddr, KeepAlive: time.Duration(cfg.PathKeepAlive), RelayUDP: cfg.RelayUDP,
		StreamWindow: cfg.MeshStreamWindow, DirectStreams: cfg.MeshDirectStreams == nil || *cfg.MeshDirectStreams,
		PeerStreams:   transport.NewPeerStreams(cfg.MaxStreamsPerPeer, cfg.MeshPeerBuffer, cfg.Metrics), // shared by every mesh server
		MaxHandshakes: cfg.MeshMaxHandshakes, MaxHandshakesPerSource: cfg.MeshMaxHandshakesPerSource}
	if a.ident != nil {
		pcfg.TLS = a.ident.src.ClientConfig(identity.AuthorizeNode(), identity.ALPNMesh)
		pcfg.ServerTLS = a.ident.src.ServerConfig(identity.AuthorizeNode(), identity.ALPNMesh)
		pcfg.RelayTLS = a.ident.src.ClientConfig(relay.AuthorizeRelay(a.ident.td))
		pcfg.TrustedSourceID = a.trustedSourceID
		pcfg.SelfID = a.ident.src.SVID().ID
		pcfg.Known = a.knownNode
		pcfg.PeerCheck, pcfg.OnCut = a.ident.src.CheckPeer, a.meshCut
	}
	if a.peers, err = paths.New(pcfg); err != nil {
		return &ConfigError{Err: fmt.Errorf("agent: %w", err)}
	}
	scfg := transport.ServerConfig{Listener: a.peers.Listener(a.meshLn), Dialer: a,
		Logger: a.log.With("sub", "mesh"), Metrics: cfg.Metrics, TLS: pcfg.ServerTLS, StreamWindow: cfg.MeshStreamWindow,
		PeerStreams: pcfg.PeerStreams, MaxHandshakes: cfg.MeshMaxHandshakes, MaxHandshakesPerSource: cfg.MeshMaxHandshakesPerSource}
	if a.ident != nil {
		scfg.TrustedSourceID = a.trustedSourceID
		scfg.PeerCheck, scfg.OnCut = a.ident.src.CheckPeer, a.meshCut
	}
	a.mesh, err = transport.NewServer(scfg)
	if err != nil {
		return fmt.Errorf("agent: mesh: %w", err)
	}
	if cfg.GatewayAddr != "" {
		if a.gateway, err = gateway.New(gateway.Config{Allow: append(slices.Clone(cfg.Control), cfg.Relays...),
			Network: cfg.Network, Logger: a.log.With("sub", "gateway"), Metrics: cfg.Metrics}); err != nil {
			return &ConfigError{Err: fmt.Errorf("agent: %w", err)}
		}
		if a.gatewayLn, err = net.Listen("tcp", cfg.GatewayAddr); err != nil {
			return fmt.Errorf("agent: site gateway listen: %w", err)
		}
	}
	return nil
}

// meshCut audits a mesh session cut because its peer was revoked, its
// certificate expired, or it held streams past its buffer budget (the
// transport logged and counted it; the reason says which). The first two
// are about the peer's certificates (kind cert); the budget is a limit
// the peer went past, with certificates that are fine (kind limit).
func (a *Agent) meshCut(c transport.Cut) {
	if a.audit == nil {
		return
	}
	kind := audit.KindLimit
	if c.Reason == transport.CutRevoked || c.Reason == transport.CutExpired {
		kind = audit.KindCert
	}
	if err := a.audit.Append(audit.Record{Kind: kind, Actor: c.Peer.String(), Action: "cut mesh session",
		Object: "dir=" + c.Dir, Reason: c.Reason + ": " + c.Err.Error()}); err != nil {
		a.log.Error("agent: mesh session cut not audited", "peerId", c.Peer.String(), "err", err)
	}
}

// GatewayAddr is the bound site gateway address, "" when not a gateway.
func (a *Agent) GatewayAddr() string {
	if a.gatewayLn == nil {
		return ""
	}
	return a.gatewayLn.Addr().String()
}

// DNSAddr, MeshAddr and AdminAddr return the bound addresses.
func (a *Agent) DNSAddr() string   { return a.dns.Addr() }
func (a *Agent) MeshAddr() string  { return a.meshLn.Addr().String() }
func (a *Agent) AdminAddr() string { return a.adminLn.Addr().String() }

// GossipAddr is the bound gossip address, or "" when gossip is off.
func (a *Agent) GossipAddr() string {
	if a.gossip == nil {
		return ""
	}
	return a.gossip.Addr()
}

// knownNode reports whether the registry has node name with identity id
// (its site in the ID), for answering introductions.
func (a *Agent) knownNode(name string, id spiffeid.ID) bool {
	a.mu.Lock()
	n := a.res.nodes[name]
	var site string
	if n != nil {
		site = n.Spec.Site
	}
	a.mu.Unlock()
	if n == nil {
		return false
	}
	want, err := identity.NodeID(a.ident.td, site, name)
	return err == nil && want == id
}
