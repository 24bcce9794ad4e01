package paths

import (
	"crypto/tls"
	"log/slog"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/netseam"
	"github.com/fogmesh/fogmesh/internal/transport"
)

// Config configures a Manager. Without Relays it is a plain TCP mesh
// client (what the agent was before paths): every peer is dialed at its
// advertised address.
type Config struct {
	// Self is this node's name; SelfID its SPIFFE ID (secure mode).
	Self   string
	SelfID spiffeid.ID
	// TLS is the mesh client configuration (nil: insecure mode, direct
	// paths only). ServerTLS, Dialer and TrustedSourceID serve the
	// streams peers open over punched paths, as the TCP mesh port does.
	TLS             *tls.Config
	ServerTLS       *tls.Config
	Dialer          transport.Dialer
	TrustedSourceID func(spiffeid.ID) bool
	// Network carries direct TCP paths (default the OS's).
	Network netseam.Network
	Logger  *slog.Logger
	Metrics *metrics.Set
	// PingInterval, DialTimeout and StreamWindow are the TCP mesh
	// client's (transport.ClientConfig).
	PingInterval, DialTimeout time.Duration
	StreamWindow              int
	// DirectStreams gives each relayed TCP connection on a direct path
	// its own TCP connection to the peer in insecure mode
	// (transport.ClientConfig.DirectStreams).
	DirectStreams bool
	// PeerCheck and OnCut go to every carrier's client and server
	// (transport.ClientConfig): sessions of revoked or expired peers are
	// cut, on every kind of path.
	PeerCheck transport.PeerCheck
	OnCut     func(transport.Cut)
	// PeerStreams caps the streams a peer may have open at this node;
	// the QUIC servers of punched and relayed paths share it with the TCP
	// mesh port (transport.ServerConfig.PeerStreams). nil: each QUIC
	// server has a default cap of its own.
	PeerStreams *transport.PeerStreams
	// MaxHandshakes and MaxHandshakesPerSource bound each QUIC server's
	// handshakes in progress (transport.QUICServerConfig; the agent's
	// meshMaxHandshakes and meshMaxHandshakesPerSource).
	MaxHandshakes, MaxHandshakesPerSource int

	// Relays are the relays' addresses (host:port, TCP; a relay answers
	// reflexive UDP requests on the same address). Several: the nearest
	// by RTT is home, the others take over when it is lost.
	Relays []string
	// RelayTLS is the client configuration for the relays (their
	// certificates come from the mesh CA; relay.AuthorizeRelay).
	RelayTLS *tls.Config
	// UDPAddr is the socket punched paths use ("0.0.0.0:0" for any port);
	// "" or "off": no punching, relayed paths only.
	UDPAddr string
	// KeepAlive is how often punched paths and relay connections are
	// refreshed to hold NAT mappings (default 20 s, below the common
	// 30 s UDP timeout).
	KeepAlive time.Duration
	// DirectHeadStart is how long a first direct attempt runs alone
	// before the relay is tried beside it (default 300 ms).
	DirectHeadStart time.Duration
	// RetryAfter is how long a peer whose direct attempt failed is not
	// tried that way again (default 30 s). A failed punch is tried again
	// after a sixth of it, doubling with each failure in a row up to it:
	// a first punch often meets a peer whose NAT mapping or agent is not
	// ready yet.
	RetryAfter time.Duration
	// RelayUDP: after a punch to a peer fails, bind a UDP channel through
	// the relay and run the mesh over QUIC on it instead of the relayed
	// TCP session. Off by default: on the bench it carries one flow at a
	// sixth of the TCP relay's rate (BENCHMARKS.md §10); channels peers
	// bind to this node are accepted either way.
	RelayUDP bool
	// Known, if set, says whether a node (name and ID) is in the
	// registry: introductions from other nodes are not answered.
	Known func(name string, id spiffeid.ID) bool
}
