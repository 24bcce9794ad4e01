// Package enroll is the client side of joining the mesh with a token: TLS
// to the control plane's sync port (ALPN fogmesh-join/1), the control
// plane authenticated by the root pin in the token, a CSR out, a
// certificate and the trust bundle back. Agents (node certificates) and
// relays (relay certificates) join the same way through it; it imports
// only identity and wire, so the lean binaries stay lean.
package enroll

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"time"

	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// Error is a join the control plane refused (bad, used, expired or
// unknown token, wrong site or kind), or a control plane whose root does
// not match the token's pin: trying again cannot help, so the command
// exits with the usage code.
type Error struct{ Msg string }

func (e *Error) Error() string { return e.Msg }

// Dialer opens a TLS connection to a control plane address with cfg.
type Dialer func(ctx context.Context, addr string, cfg *tls.Config) (*tls.Conn, error)

// DialTLS is the plain Dialer: TCP, then a TLS handshake with the host of
// addr as the server name.
func DialTLS(ctx context.Context, addr string, cfg *tls.Config) (*tls.Conn, error) {
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return HandshakeTLS(ctx, raw, addr, cfg)
}

// HandshakeTLS runs the client TLS handshake on raw, a connection to addr,
// within ctx, with addr's host as the server name when cfg has none; it
// closes raw if the handshake fails.
func HandshakeTLS(ctx context.Context, raw net.Conn, addr string, cfg *tls.Config) (*tls.Conn, error) {
	if cfg.ServerName == "" {
		host, _, _ := net.SplitHostPort(addr)
		cfg = cfg.Clone()
		cfg.ServerName = host
	}
	tc := tls.Client(raw, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, err
	}
	return tc, nil
}

// ParseToken parses the token a member joins with and checks that it is
// of kind want: identity.TokenJoin for an agent, identity.TokenRelay for a
// relay, identity.TokenRegion for a regional control plane. The wrong kind is refused here, before any connection, with an
// error that says which command the token is for (the control plane
// refuses it too).
func ParseToken(s, want string) (identity.Token, error) {
	tok, err := identity.ParseToken(s)
	if err != nil {
		return identity.Token{}, err
	}
	if tok.Kind == want {
		return tok, nil
	}
	hint := map[string]string{
		identity.TokenJoin:   "an agent's join token; make one with 'fogmesh token create -site SITE'",
		identity.TokenRelay:  "a relay token; make one with 'fogmesh token create -kind relay'",
		identity.TokenRegion: "a region token; make one on the global control plane with 'fogmesh token create -kind region -region NAME'",
	}[want]
	if hint == "" {
		hint = "a " + want + " token"
	}
	switch tok.Kind {
	case identity.TokenRelay:
		return identity.Token{}, errors.New("this is a relay token (for fogmesh relay -join-token), not " + hint)
	case identity.TokenJoin:
		return identity.Token{}, errors.New("this is an agent's join token, not " + hint)
	case identity.TokenRegion:
		return identity.Token{}, errors.New("this is a region token (for fogmesh control --mode regional --join-token), not " + hint)
	}
	return identity.Token{}, fmt.Errorf("%s tokens cannot join; want %s", tok.Kind, hint)
}

// Join sends m (a wire.TypeJoin message; its Token is set from tok) to the
// control planes at addrs in turn until one answers, backing off between
// rounds (8 rounds, 250ms doubling to 4s, jittered). who prefixes errors
// and log lines ("agent", "relay"). A refusal is an *Error at once; the
// answer is a wire.TypeJoined message. Each attempt (dial, TLS handshake,
// request and answer) is bounded by timeout (0: 10 s; a slow link's may
// need more).
func Join(ctx context.Context, dial Dialer, addrs []string, tok identity.Token, m *wire.Message, log *slog.Logger, who string, timeout time.Duration) (*wire.Message, error) {
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	m.Type, m.Token = wire.TypeJoin, tok.String()
	backoff := 250 * time.Millisecond
	var last error
	for attempt := 0; attempt < 8; attempt++ {
		for _, addr := range addrs {
			resp, err := joinOnce(ctx, dial, addr, tok, m, who, timeout)
			if err == nil {
				return resp, nil
			}
			var je *Error
			if errors.As(err, &je) {
				return nil, err
			}
			last = err
			log.Warn(who+": join attempt failed", "control", addr, "err", err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(backoff/2 + rand.N(backoff/2+1)):
		}
		backoff = min(2*backoff, 4*time.Second)
	}
	return nil, fmt.Errorf("%s: join: no control plane answered: %w", who, last)
}

func joinOnce(ctx context.Context, dial Dialer, addr string, tok identity.Token, m *wire.Message, who string, timeout time.Duration) (*wire.Message, error) {
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := dial(dctx, addr, identity.JoinClientConfig(tok.Pin, nil))
	if err != nil {
		if errors.Is(err, context.Canceled) || !isPinError(err) {
			return nil, err
		}
		return nil, &Error{Msg: who + ": join: " + err.Error()}
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if err := wire.Write(c, m); err != nil {
		return nil, err
	}
	resp, err := wire.NewReader(c).Read()
	if err != nil {
		return nil, err
	}
	switch resp.Type {
	case wire.TypeJoined:
		return resp, nil
	case wire.TypeError:
		return nil, &Error{Msg: who + ": " + resp.Error}
	}
	return nil, fmt.Errorf("join: unexpected %s", resp.Type)
}

// isPinError reports a control plane whose certificate did not match the
// pin (or did not verify at all).
func isPinError(err error) bool {
	var ce *tls.CertificateVerificationError
	return errors.As(err, &ce)
}

// RenewAt is when a certificate from the mesh CA should be renewed: half
// its lifetime counted from issue (NotBefore is backdated by
// identity.ClockSkew), plus up to a twentieth of it, so members that
// joined together do not all renew at once. It is svid.NodeRenewAt for
// binaries that do not link the workload SVID machinery.
func RenewAt(c *x509.Certificate) time.Time {
	issued := c.NotBefore.Add(identity.ClockSkew)
	life := c.NotAfter.Sub(issued)
	return issued.Add(life/2 + rand.N(life/20+1))
}
