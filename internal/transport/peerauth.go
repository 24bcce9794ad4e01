package transport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/quic-go/quic-go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/identity"
)

// A TLS session authenticates its peer once, at the handshake; these
// helpers keep what it authenticated so that a session outlives neither a
// revocation nor the peer's certificates. Every carrier (yamux over TLS,
// relayed or direct, and QUIC) records a peerAuth per session and:
//   - closes the session at the earliest NotAfter of the peer's chain (one
//     timer per session: sessions are per peer, few, and a timer closes
//     at expiry exactly, where a sweep would add its period and wake up
//     for nothing);
//   - checks the peer again (PeerCheck: the deny list) and its expiry
//     before every new stream, so that no stream starts on a session that
//     a revocation or an expiry condemned before its close caught up;
//   - closes, on Revalidate (the agent calls it when the deny list
//     changes), every session whose peer no longer passes PeerCheck.
// A cut is logged, counted in fogmesh_mesh_sessions_cut_total{dir,reason}
// and reported to OnCut (the agent audits it); the session's streams
// fail with an error naming the cause (ErrPeerRevoked, ErrPeerExpired).

// Errors that a cut session's streams and a refused stream wrap.
var (
	// ErrPeerRevoked: the peer's identity, or a CA of its chain (a
	// regional intermediate), is on the deny list.
	ErrPeerRevoked = errors.New("peer revoked")
	// ErrPeerExpired: a certificate of the peer's chain expired.
	ErrPeerExpired = errors.New("peer certificate expired")
	// ErrPeerBuffer: the peer went past a bound on its mesh streams: it
	// left more streams open than its buffer budget allows (peerbuffer.go),
	// left refused streams open past maxDrainsPerPeer whether a budget is
	// set or not, or sent on a refused stream past the window it had
	// (drain.go). The wrapping error says which; this text must fit all
	// three (the last holds one stream open, not too many).
	ErrPeerBuffer = errors.New("peer went past its mesh stream bounds")
)

// Reasons of a cut, the reason label of fogmesh_mesh_sessions_cut_total.
const (
	CutRevoked = "revoked"
	CutExpired = "expired"
	CutBuffer  = "buffer" // the peer left refused or ended streams open (peerbuffer.go)
)

// PeerCheck says whether an authenticated peer (its SPIFFE ID and the
// certificates it presented, leaf first) may still use a session: nil, or
// why not (identity.Source.CheckPeer: the deny list). Expiry is checked by
// the transport itself.
type PeerCheck func(id spiffeid.ID, certs []*x509.Certificate) error

// Cut describes a session closed because its peer lost the right to it,
// or held more of this agent's memory than its buffer budget allows.
type Cut struct {
	Dir     string      // "in" (accepted) or "out" (dialed)
	Peer    spiffeid.ID // the peer's node identity
	Reason  string      // CutRevoked, CutExpired or CutBuffer
	Err     error       // the cause, wrapping ErrPeerRevoked, ErrPeerExpired or ErrPeerBuffer
	Streams int         // streams open on it when it was cut (-1: unknown, QUIC)
}

// peerAuth is what a session's handshake authenticated. The zero value
// (insecure mode) is always valid.
type peerAuth struct {
	id    spiffeid.ID
	certs []*x509.Certificate
	// notAfter is the earliest NotAfter in certs, retireAt when a client
	// stops opening new streams on the session (renewal margin); zero
	// without certificates.
	notAfter, retireAt time.Time
	// cause is set when the session is cut; its streams' errors wrap it.
	cause *atomic.Pointer[error]
	// drains are a server-side yamux session's drains, ended before the
	// server closes the session (drain.go); nil elsewhere.
	drains *refusals
}

func newPeerAuth(id spiffeid.ID, certs []*x509.Certificate) peerAuth {
	a := peerAuth{id: id, certs: certs, cause: new(atomic.Pointer[error])}
	var first *x509.Certificate
	for _, c := range certs {
		if first == nil || c.NotAfter.Before(first.NotAfter) {
			first = c
		}
	}
	if first != nil {
		a.notAfter = first.NotAfter
		a.retireAt = first.NotAfter.Add(-renewMargin(first))
	}
	return a
}

// authOf is the peerAuth of a completed TLS handshake.
func authOf(id spiffeid.ID, cs tls.ConnectionState) peerAuth {
	return newPeerAuth(id, cs.PeerCertificates)
}

// renewMargin is how long before c expires a client stops opening streams
// on a session authenticated with it: a quarter of its life. A connected
// node renews at half its certificate's life (svid.NodeRenewAt), so by
// then a new handshake meets the renewed certificate, the old session
// drains, and its expiry cuts only streams older than the margin.
func renewMargin(c *x509.Certificate) time.Duration {
	issued := c.NotBefore.Add(identity.ClockSkew) // NotBefore is backdated
	if !issued.Before(c.NotAfter) {
		issued = c.NotBefore
	}
	return c.NotAfter.Sub(issued) / 4
}

// minLateRetire is the least time a late session (retireIn) keeps for its
// streams: below it the session is left to the expiry.
const minLateRetire = 200 * time.Millisecond

// retireIn is how long after now a client retires a session authenticated
// by a, and false if it never does. At retireAt; a session opened after
// it (the peer had not renewed yet, perhaps by milliseconds, as when both
// nodes renew at the same moment and the dialer's RetireAll comes first)
// halfway to the expiry, so that its successor meets the peer's renewed
// certificate and the expiry cuts no stream in flight. A peer that does
// not renew meets halving retirements until less than 2×minLateRetire is
// left: a handful of handshakes, and its streams fail at the expiry anyway.
func (a *peerAuth) retireIn(now time.Time) (time.Duration, bool) {
	if a.notAfter.IsZero() {
		return 0, false
	}
	if d := a.retireAt.Sub(now); d > 0 {
		return d, true
	}
	left := a.notAfter.Sub(now)
	if left < 2*minLateRetire {
		return 0, false
	}
	return left / 2, true
}

// check returns why the peer may not use the session now, or nil.
func (a *peerAuth) check(now time.Time, pc PeerCheck) (reason string, err error) {
	if a.id.IsZero() {
		return "", nil
	}
	if !a.notAfter.IsZero() && !now.Before(a.notAfter) {
		return CutExpired, fmt.Errorf("%w: %s's chain expired at %s", ErrPeerExpired, a.id, a.notAfter.Format(time.RFC3339Nano))
	}
	if pc != nil {
		if err := pc(a.id, a.certs); err != nil {
			return CutRevoked, fmt.Errorf("%w: %w", ErrPeerRevoked, err)
		}
	}
	return "", nil
}

// setCause records why the session was cut; false if it was cut before
// (the expiry timer and Revalidate may race: one reports).
func (a *peerAuth) setCause(err error) bool {
	return a.cause != nil && a.cause.CompareAndSwap(nil, &err)
}

// causeOf returns the recorded cut cause, or nil.
func causeOf(p *atomic.Pointer[error]) error {
	if p == nil {
		return nil
	}
	if e := p.Load(); e != nil {
		return *e
	}
	return nil
}

// untilExpiry is how long until the session must close (-1: never).
func (a *peerAuth) untilExpiry() time.Duration {
	if a.id.IsZero() || a.notAfter.IsZero() {
		return -1
	}
	return max(time.Until(a.notAfter), 0)
}

// cutCounter counts one cut in m's set.
func (m *meshMetrics) cut(reason string) {
	m.set.GetOrCreateCounter(fmt.Sprintf(`fogmesh_mesh_sessions_cut_total{dir=%q,reason=%q}`, m.dir, reason)).Inc()
}

// SessionsCut returns fogmesh_mesh_sessions_cut_total{dir,reason} in set.
func SessionsCut(set *metrics.Set, dir, reason string) uint64 {
	return set.GetOrCreateCounter(fmt.Sprintf(`fogmesh_mesh_sessions_cut_total{dir=%q,reason=%q}`, dir, reason)).Get()
}

// reportCut logs, counts and reports one cut.
func reportCut(log *slog.Logger, m *meshMetrics, onCut func(Cut), c Cut) {
	m.cut(c.Reason)
	sayCut(log, onCut, c)
}

// sayCut is reportCut for a cut counted already: it logs c and reports it
// to onCut.
func sayCut(log *slog.Logger, onCut func(Cut), c Cut) {
	log.Warn("mesh: session cut", "dir", c.Dir, "peerId", c.Peer.String(),
		"reason", c.Reason, "streams", c.Streams, "err", c.Err)
	if onCut != nil {
		onCut(c)
	}
}

// cutPeer is the check every carrier's cutIfInvalid makes: it reports
// whether pa's peer may no longer use its connection, and runs cut (report
// and close) once, on the call that records the cause.
func cutPeer(pa *peerAuth, pc PeerCheck, cut func(reason string, err error)) bool {
	if causeOf(pa.cause) != nil {
		return true
	}
	reason, err := pa.check(time.Now(), pc)
	if err == nil {
		return false
	}
	if pa.setCause(err) {
		cut(reason, err)
	}
	return true
}

// cutQUIC is cutIfInvalid for a QUIC connection, either side.
func cutQUIC(conn *quic.Conn, pa *peerAuth, dir string, pc PeerCheck, log *slog.Logger, m *meshMetrics, onCut func(Cut)) bool {
	return cutPeer(pa, pc, func(reason string, err error) {
		msg := "peer certificate expired"
		if reason == CutRevoked {
			msg = "peer revoked"
		}
		reportCut(log, m, onCut, Cut{Dir: dir, Peer: pa.id, Reason: reason, Err: err, Streams: -1})
		conn.CloseWithError(quicCodeDropped, msg)
	})
}

// checkSource refuses a header that claims another source node than the
// TLS peer, or a SourceID of a trust domain this agent does not trust.
func (s *Server) checkSource(ctx context.Context, h Header) error {
	p, ok := PeerFromContext(ctx)
	if !ok {
		return nil
	}
	if h.Source != p.Node {
		return fmt.Errorf("header source %q is not the authenticated peer %s", h.Source, p.ID)
	}
	if h.SourceID != "" {
		id, err := spiffeid.FromString(h.SourceID)
		if err != nil {
			return fmt.Errorf("sourceId: %w", err)
		}
		if s.cfg.TrustedSourceID != nil && !s.cfg.TrustedSourceID(id) {
			return fmt.Errorf("sourceId %s: trust domain not trusted", id)
		}
	}
	return nil
}
