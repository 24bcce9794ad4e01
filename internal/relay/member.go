package relay

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/fogmesh/fogmesh/internal/atomicfile"
	"github.com/fogmesh/fogmesh/internal/enroll"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// Files of a relay's state directory (MemberConfig.StateDir).
const (
	MemberKeyFile   = "relay-key.pem"  // the relay's private key, made here, mode 0600
	MemberCertFile  = "relay-cert.pem" // its relay certificate chain, leaf first
	MemberTrustFile = "trust.json"     // wire.Trust from the control plane: roots and revoked IDs
)

// MemberConfig configures a relay that is a member of the mesh: it joins
// with a relay token the way an agent joins with a join token, and keeps
// its certificate and the deny list current through the control plane.
type MemberConfig struct {
	// StateDir holds the key, the certificate and the trust document, so a
	// restart needs no token. Required.
	StateDir string
	// Control are the control planes' sync addresses. Required.
	Control []string
	// Name is the relay's name (a DNS label): its identity is
	// spiffe://<td>/relay/<name>. Joining without one uses the hostname; on
	// a restart it must match the stored certificate when set.
	Name string
	// JoinToken is a relay token ('fogmesh token create -kind relay'),
	// used only when the state directory has no usable certificate.
	JoinToken string
	// ControlHandshakeTimeout bounds each attempt of the join, each dial
	// of the stream to a control plane, its TLS handshake included, and,
	// once the stream is up, the wait for the control plane's first trust
	// document on it (default 10s; 0 is the default, negative is refused;
	// the stream is then dialed again). Raise it, with
	// the control plane's syncHandshakeTimeout, on slow links (satellite,
	// 2G) where a handshake takes longer: the agent's setting of that name.
	ControlHandshakeTimeout time.Duration
	// Dial opens TLS connections to the control plane (default
	// enroll.DialTLS).
	Dial    enroll.Dialer
	Logger  *slog.Logger
	Metrics *metrics.Set
}

// ConfigError is a member configuration that cannot work as given (no
// usable certificate and no token; a refused join; a name that does not
// match the certificate): retrying does not help.
type ConfigError struct{ Err error }

func (e *ConfigError) Error() string { return e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

// Member is a relay's membership of the mesh.
type Member struct {
	cfg MemberConfig
	log *slog.Logger
	src *identity.Source
	key crypto.Signer

	mu     sync.Mutex // guards the following
	td     spiffeid.TrustDomain
	id     spiffeid.ID
	cert   *x509.Certificate
	denied []string

	mConnected *metrics.Gauge
	connected  bool
	mRenewals  *metrics.Counter
	mTrust     *metrics.Counter

	welcomeMisses int // Run's alone: the streams in a row given up for no trust document (welcomeWait)
}

// OpenMember loads the relay's key, certificate and trust from the state
// directory, joining with cfg.JoinToken when there is no usable
// certificate. The Source it fills (Member.Source) is the one to give
// relay.New.
func OpenMember(ctx context.Context, cfg MemberConfig) (*Member, error) {
	if cfg.StateDir == "" || len(cfg.Control) == 0 {
		return nil, &ConfigError{errors.New("relay: a state directory and a control plane address are required")}
	}
	if cfg.ControlHandshakeTimeout < 0 {
		return nil, &ConfigError{fmt.Errorf("relay: controlHandshakeTimeout %s is negative (0 or unset: the default, 10s)", cfg.ControlHandshakeTimeout)}
	}
	if cfg.ControlHandshakeTimeout == 0 {
		cfg.ControlHandshakeTimeout = 10 * time.Second
	}
	if cfg.Dial == nil {
		cfg.Dial = enroll.DialTLS
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.NewSet()
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("relay: state directory: %w", err)
	}
	m := &Member{cfg: cfg, log: cfg.Logger, src: identity.NewSource()}
	m.mConnected = cfg.Metrics.NewGauge(`fogmesh_relay_control_connected`, func() float64 {
		m.mu.Lock()
		defer m.mu.Unlock()
		if m.connected {
			return 1
		}
		return 0
	})
	m.mRenewals = cfg.Metrics.NewCounter(`fogmesh_relay_certificate_renewals_total`)
	m.mTrust = cfg.Metrics.NewCounter(`fogmesh_relay_trust_updates_total`)

	keyPath := m.path(MemberKeyFile)
	if _, err := os.Stat(keyPath); errors.Is(err, os.ErrNotExist) {
		k, err := identity.NewKey()
		if err != nil {
			return nil, err
		}
		pemKey, err := identity.EncodeKeyPEM(k)
		if err != nil {
			return nil, err
		}
		if err := atomicfile.Write(keyPath, pemKey, 0o600); err != nil {
			return nil, fmt.Errorf("relay: save key: %w", err)
		}
	}
	key, err := identity.ReadKeyFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("relay: %w", err)
	}
	m.key = key
	if b, err := os.ReadFile(m.path(MemberTrustFile)); err == nil {
		var t wire.Trust
		if err := json.Unmarshal(b, &t); err != nil {
			m.log.Error("relay: trust file unreadable; join again if the certificate cannot be verified", "file", m.path(MemberTrustFile), "err", err)
		} else if err := m.applyTrust(&t, nil, false); err != nil {
			m.log.Error("relay: trust file unusable", "file", m.path(MemberTrustFile), "err", err)
		}
	}
	if err := m.loadCert(); err != nil {
		if cfg.JoinToken == "" {
			var ce *ConfigError
			if errors.As(err, &ce) {
				return nil, err
			}
			return nil, &ConfigError{fmt.Errorf("relay: no usable relay certificate in %s (%v): join with a relay token (-join-token from 'fogmesh token create -kind relay')", cfg.StateDir, err)}
		}
		if err := m.join(ctx); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *Member) path(name string) string { return filepath.Join(m.cfg.StateDir, name) }

// Source is the relay's identity, trust and deny list.
func (m *Member) Source() *identity.Source { return m.src }

// Denied is the deny list as last received from the control plane.
func (m *Member) Denied() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.denied
}

// ID is the relay's SPIFFE ID.
func (m *Member) ID() spiffeid.ID {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.id
}

// Certificate is the relay's current certificate.
func (m *Member) Certificate() *x509.Certificate {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cert
}

func (m *Member) loadCert() error {
	m.mu.Lock()
	td := m.td
	m.mu.Unlock()
	if td.IsZero() {
		return errors.New("no trust document")
	}
	b, err := os.ReadFile(m.path(MemberCertFile))
	if err != nil {
		return err
	}
	certs, err := identity.ParseCertificatesPEM(b)
	if err != nil {
		return err
	}
	if _, _, err := x509svid.Verify(certs, m.src); err != nil {
		return fmt.Errorf("certificate does not verify against the stored trust: %w", err)
	}
	return m.useCert(certs)
}

// useCert checks certs (leaf first) and makes them the relay's SVID.
func (m *Member) useCert(certs []*x509.Certificate) error {
	svid, err := identity.NewSVID(certs, m.key)
	if err != nil {
		return err
	}
	name, ok := identity.ParseRelayID(svid.ID)
	if !ok {
		return fmt.Errorf("certificate is for %s, not a relay", svid.ID)
	}
	if m.cfg.Name != "" && name != m.cfg.Name {
		return &ConfigError{fmt.Errorf("relay: the certificate in %s is for relay %q, not %q (use another -state-dir, or leave -name out)", m.cfg.StateDir, name, m.cfg.Name)}
	}
	if time.Now().After(certs[0].NotAfter) {
		return fmt.Errorf("certificate expired at %s", certs[0].NotAfter.Format(time.RFC3339))
	}
	m.mu.Lock()
	m.id, m.cert = svid.ID, certs[0]
	m.mu.Unlock()
	m.src.SetSVID(svid)
	return nil
}

func (m *Member) saveCert(certs []*x509.Certificate) error {
	return atomicfile.Write(m.path(MemberCertFile), identity.EncodeCertificatesPEM(certs...), 0o644)
}

// join gets the relay certificate with the relay token (enroll.Join, as
// an agent joins). A refusal is a *ConfigError.
func (m *Member) join(ctx context.Context) error {
	tok, err := enroll.ParseToken(m.cfg.JoinToken, identity.TokenRelay)
	if err != nil {
		return &ConfigError{fmt.Errorf("relay: join token: %w", err)}
	}
	name := m.cfg.Name
	if name == "" {
		h, err := os.Hostname()
		if err != nil {
			return &ConfigError{fmt.Errorf("relay: no name given and no hostname: %w", err)}
		}
		name = strings.ToLower(h)
	}
	csr, err := identity.NewCSR(m.key)
	if err != nil {
		return err
	}
	resp, err := enroll.Join(ctx, m.cfg.Dial, m.cfg.Control, tok, &wire.Message{Relay: name, CSR: csr}, m.log, "relay", m.cfg.ControlHandshakeTimeout)
	if err != nil {
		var je *enroll.Error
		if errors.As(err, &je) {
			return &ConfigError{err}
		}
		return err
	}
	if resp.Trust == nil {
		return errors.New("relay: join: no trust document in the answer")
	}
	certs, err := identity.ParseDERs(resp.Certificates)
	if err != nil {
		return fmt.Errorf("relay: join: %w", err)
	}
	m.mu.Lock()
	m.td = spiffeid.TrustDomain{}
	m.mu.Unlock()
	if err := m.applyTrust(resp.Trust, nil, true); err != nil {
		return fmt.Errorf("relay: join: %w", err)
	}
	if _, _, err := x509svid.Verify(certs, m.src); err != nil {
		return fmt.Errorf("relay: join: certificate: %w", err)
	}
	if err := m.useCert(certs); err != nil {
		return fmt.Errorf("relay: join: %w", err)
	}
	if err := m.saveCert(certs); err != nil {
		return fmt.Errorf("relay: join: save certificate: %w", err)
	}
	m.log.Info("relay: joined", "id", m.ID().String(), "notAfter", certs[0].NotAfter)
	return nil
}

// Run keeps the relay stream to the control plane until ctx is done:
// every trust document pushed is applied at once (setDenied gets the
// revoked IDs: Server.SetDenied closes their open connections), and the
// certificate is renewed at half its lifetime (enroll.RenewAt). A lost
// stream is redialed with backoff (250ms doubling to 10s, jittered); the
// control plane sends the current trust document first on every stream.
func (m *Member) Run(ctx context.Context, setDenied func([]string)) {
	backoff := 250 * time.Millisecond
	for ctx.Err() == nil {
		for _, addr := range m.cfg.Control {
			got, err := m.stream(ctx, addr, setDenied)
			if got {
				backoff = 250 * time.Millisecond
			}
			if ctx.Err() != nil {
				return
			}
			m.log.Warn("relay: control plane stream ended", "control", addr, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff/2 + rand.N(backoff/2+1)):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

// welcomeWait is how long a stream waits for the control plane's first
// trust document after misses streams in a row were given up for none:
// bound (controlHandshakeTimeout), doubled at each miss up to 4 times
// bound. A link where it always takes longer than bound would otherwise
// have the relay reconnect forever; a control plane that is down instead
// fails the dial or the handshake, which the bound holds as set.
func welcomeWait(bound time.Duration, misses int) time.Duration {
	if bound > math.MaxInt64>>2 {
		return bound // already longer than any link takes; doubled, it would wrap
	}
	return bound << min(misses, 2)
}

// streamIdle is how long a relay stream's reads wait for a frame once the
// first trust document came: 4 heartbeats (a var for tests).
var streamIdle = 4 * wire.RelayHeartbeat

// stream runs one relay stream; got reports whether a trust document
// arrived on it.
func (m *Member) stream(ctx context.Context, addr string, setDenied func([]string)) (got bool, err error) {
	m.mu.Lock()
	td := m.td
	m.mu.Unlock()
	dctx, cancel := context.WithTimeout(ctx, m.cfg.ControlHandshakeTimeout)
	c, err := m.cfg.Dial(dctx, addr, m.src.ClientConfig(identity.AuthorizeID(identity.ControlID(td)), identity.ALPNRelay))
	cancel()
	if err != nil {
		return false, err
	}
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() { <-ctx.Done(); c.Close() }()
	var wmu sync.Mutex
	write := func(msg *wire.Message) error {
		wmu.Lock()
		defer wmu.Unlock()
		c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		return wire.Write(c, msg)
	}
	type frame struct {
		m   *wire.Message
		err error
	}
	// The control plane sends the trust document as soon as the stream is
	// up: its first one is the relay's welcome, bounded as the handshake
	// is (an agent's welcome likewise), not by the reads' 4 heartbeats,
	// and longer after streams given up for none (welcomeWait).
	wait := welcomeWait(m.cfg.ControlHandshakeTimeout, m.welcomeMisses)
	welcomeBy := time.Now().Add(wait)
	in := make(chan frame)
	go func() {
		r := wire.NewReader(c)
		for {
			// Until the welcome's bound its timer decides, not the reads:
			// a wait grown past streamIdle (a bound over 15 s, doubled)
			// would end as an i/o timeout, not counted as a stream given
			// up for no trust document, and never grow again.
			idle := time.Now().Add(streamIdle)
			if by := welcomeBy.Add(streamIdle); by.After(idle) {
				idle = by
			}
			c.SetReadDeadline(idle)
			msg, err := r.Read()
			select {
			case in <- frame{msg, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	defer func() {
		m.mu.Lock()
		m.connected = false
		m.mu.Unlock()
	}()
	hb := time.NewTicker(wire.RelayHeartbeat)
	defer hb.Stop()
	welcome := time.NewTimer(wait)
	defer welcome.Stop()
	renew := time.NewTimer(max(time.Until(enroll.RenewAt(m.Certificate())), 0))
	defer renew.Stop()
	var refused error // the last trust document refused before the first applied
	for {
		select {
		case <-ctx.Done():
			return got, ctx.Err()
		case <-welcome.C:
			if !got && refused != nil {
				// One came: the bound is not what to raise.
				return false, fmt.Errorf("the control plane's trust document was refused: %w", refused)
			}
			if !got {
				m.welcomeMisses++
				return false, fmt.Errorf("no trust document from the control plane within %s of the handshake (controlHandshakeTimeout %s; the next stream waits %s)",
					wait, m.cfg.ControlHandshakeTimeout, welcomeWait(m.cfg.ControlHandshakeTimeout, m.welcomeMisses))
			}
		case <-hb.C:
			if err := write(&wire.Message{Type: wire.TypeHeartbeat}); err != nil {
				return got, err
			}
		case <-renew.C:
			csr, err := identity.NewCSR(m.key) // the same key: it never leaves the host
			if err != nil {
				return got, err
			}
			if err := write(&wire.Message{Type: wire.TypeRenew, CSR: csr}); err != nil {
				return got, err
			}
			renew.Reset(30 * time.Second) // again unless a certificate arrives
		case f := <-in:
			if f.err != nil {
				return got, f.err
			}
			switch f.m.Type {
			case wire.TypeTrust:
				if f.m.Trust == nil {
					return got, errors.New("trust message without a trust document")
				}
				if err := m.applyTrust(f.m.Trust, setDenied, true); err != nil {
					m.log.Error("relay: trust from the control plane not applied", "err", err)
					refused = err
					continue
				}
				m.mTrust.Inc()
				if !got {
					got = true
					m.welcomeMisses = 0
					m.mu.Lock()
					m.connected = true
					m.mu.Unlock()
					m.log.Info("relay: connected to the control plane", "control", addr, "revoked", len(f.m.Trust.Revoked))
				}
			case wire.TypeCert:
				if err := m.applyCert(f.m.Certificates); err != nil {
					m.log.Error("relay: renewed certificate not applied", "err", err)
					continue
				}
				renew.Reset(max(time.Until(enroll.RenewAt(m.Certificate())), 0))
			case wire.TypeHeartbeat:
			case wire.TypeError:
				return got, fmt.Errorf("control plane: %s", f.m.Error)
			default:
				return got, fmt.Errorf("unexpected %s on the relay stream", f.m.Type)
			}
		}
	}
}

// applyCert installs a renewed certificate: the next handshake uses it,
// open connections are untouched.
func (m *Member) applyCert(ders [][]byte) error {
	certs, err := identity.ParseDERs(ders)
	if err != nil {
		return err
	}
	if _, _, err := x509svid.Verify(certs, m.src); err != nil {
		return err
	}
	if err := m.useCert(certs); err != nil {
		return err
	}
	if err := m.saveCert(certs); err != nil {
		return err
	}
	m.mRenewals.Inc()
	m.log.Info("relay: certificate renewed", "serial", certs[0].SerialNumber.Text(16), "notAfter", certs[0].NotAfter)
	return nil
}
