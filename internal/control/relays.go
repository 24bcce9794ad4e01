package control

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/audit"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/store"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// Relays (fogmesh relay) are members of the mesh beside nodes: a relay
// joins with a relay token (identity.TokenRelay, never a node's join
// token) and gets a certificate for spiffe://<td>/relay/<name>; then it
// keeps a relay stream (ALPN fogmesh-relay/1, mutual TLS with that
// certificate) on the sync port, on which the control plane pushes the
// trust document (bundles and revoked IDs, without the gossip key: a relay
// is not in the gossip ring) now and after every change, and answers
// renewals. A relay never registers as a node and gets no configuration.

func (sec *security) authorizeRelay(id spiffeid.ID, _ [][]*x509.Certificate) error {
	if !id.MemberOf(sec.ca.TrustDomain()) {
		return fmt.Errorf("%s is not in trust domain %s", id, sec.ca.TrustDomain())
	}
	if _, ok := identity.ParseRelayID(id); !ok {
		return fmt.Errorf("%s is not a relay identity", id)
	}
	return nil
}

// relayTrust is the trust document as a relay gets it: without the
// gossip key.
func relayTrust(t *wire.Trust) *wire.Trust {
	if t == nil {
		return nil
	}
	c := *t
	c.GossipKey = nil
	return &c
}

// serveRelayJoin answers a relay's join (the token is a relay token): a
// relay certificate for m.Relay and the trust document. The token is
// marked used in the same transaction that checks it.
func (sec *security) serveRelayJoin(c net.Conn, m *wire.Message, tok identity.Token, refuse func(error) error, pin func() bool) error {
	name := m.Relay
	if !siteRE.MatchString(name) {
		return refuse(fmt.Errorf("relay name %q is not a DNS label", name))
	}
	csr, err := identity.ParseCSR(m.CSR)
	if err != nil {
		return refuse(err)
	}
	id, err := identity.RelayID(sec.ca.TrustDomain(), name)
	if err != nil {
		return refuse(err)
	}
	if sec.src.Denied(id.String()) {
		return refuse(fmt.Errorf("relay %s is revoked", name))
	}
	now := time.Now()
	rec, err := sec.s.st.GetSecure(keyToken + tok.ID)
	if err != nil {
		return refuse(err)
	}
	if _, err := checkRelayToken(rec, tok, now); err != nil {
		return refuse(fmt.Errorf("token %s: %w", tok.ID, err))
	}
	// The token checks out: the gate may no longer evict this join (an
	// eviction from here on would burn the single-use token for a
	// certificate the node never gets). A connection that sends no valid
	// token stays evictable.
	if !pin() {
		return refuse(identity.ErrEvicted)
	}
	certs, err := sec.ca.SignRelayCSR(csr, name)
	if err != nil {
		return refuse(err)
	}
	err = sec.s.st.UpdateSecure(func(tx *store.SecureTx) error {
		r, err := checkRelayToken(tx.Get(keyToken+tok.ID), tok, now)
		if err != nil {
			return err
		}
		r.UsedBy = "relay:" + name
		nb, _ := json.Marshal(r)
		return tx.Put(keyToken+tok.ID, nb)
	})
	if err != nil {
		return refuse(fmt.Errorf("token %s: %w", tok.ID, err))
	}
	sec.issued("relay", certs[0])
	t, _ := sec.currentTrust()
	sec.mJoins["ok"].Inc()
	sec.s.log.Info("control: relay joined", "relay", name, "token", tok.ID, "serial", certs[0].SerialNumber.Text(16))
	return wire.Write(c, &wire.Message{Type: wire.TypeJoined, Certificates: identity.DERs(certs), Trust: relayTrust(t)})
}

// checkRelayToken checks a stored token record b against a presented relay
// token.
func checkRelayToken(b []byte, tok identity.Token, now time.Time) (tokenRecord, error) {
	var r tokenRecord
	switch {
	case b == nil, json.Unmarshal(b, &r) != nil, r.Kind != identity.TokenRelay, !tok.MatchesHash(r.Hash):
		return r, errors.New("unknown token")
	case r.UsedBy != "":
		return r, errors.New("token already used")
	case !r.Expires.IsZero() && now.After(r.Expires):
		return r, errors.New("token expired")
	}
	return r, nil
}

// serveRelay runs a relay's stream (serveMemberStream): a certificate for
// each renewal.
func (s *Server) serveRelay(ctx context.Context, c net.Conn, peer spiffeid.ID) error {
	name, ok := identity.ParseRelayID(peer)
	if !ok {
		return fmt.Errorf("%s is not a relay identity", peer)
	}
	return s.serveMemberStream(ctx, c, peer, "relay", name, func(m *wire.Message, write func(*wire.Message) error) error {
		csr, err := identity.ParseCSR(m.CSR)
		if err != nil {
			write(&wire.Message{Type: wire.TypeError, Error: "renew: " + err.Error()})
			return err
		}
		certs, err := s.sec.ca.SignRelayCSR(csr, name)
		if err != nil {
			return err
		}
		s.sec.issued("relay", certs[0])
		s.log.Info("control: relay certificate renewed", "relay", name, "serial", certs[0].SerialNumber.Text(16), "notAfter", certs[0].NotAfter)
		return write(&wire.Message{Type: wire.TypeCert, Certificates: identity.DERs(certs)})
	})
}

// serveMemberStream runs the stream of a relay or a region (kind) named
// name: the trust document now and after every change (pushTrust), an
// answer to each heartbeat, and renew's answer to each renewal of a peer
// not revoked. It ends when the peer is silent for 4 ×
// wire.RelayHeartbeat, on a bad frame or a failed renewal, when the peer
// is revoked (revokeRelay, revokeRegion close the stream) or when the
// control plane stops.
func (s *Server) serveMemberStream(ctx context.Context, c net.Conn, peer spiffeid.ID, kind, name string,
	renew func(m *wire.Message, write func(*wire.Message) error) error) error {
	s.mu.Lock()
	s.streams[c] = kind + ":" + name
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.streams, c)
		s.mu.Unlock()
	}()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	write := s.pushTrust(ctx, c)
	s.log.Info("control: "+kind+" connected", kind, name, "remote", c.RemoteAddr())
	r := wire.NewReader(c)
	for {
		c.SetReadDeadline(time.Now().Add(4 * wire.RelayHeartbeat))
		m, err := r.Read()
		if err != nil {
			return err
		}
		switch m.Type {
		case wire.TypeHeartbeat:
			err = write(&wire.Message{Type: wire.TypeHeartbeat})
		case wire.TypeRenew:
			if s.sec.src.Denied(peer.String()) {
				write(&wire.Message{Type: wire.TypeError, Error: kind + " is revoked"})
				return fmt.Errorf("%s %s is revoked", kind, name)
			}
			err = renew(m, write)
		default:
			write(&wire.Message{Type: wire.TypeError, Error: "unexpected " + m.Type + " on a " + kind + " stream"})
			return fmt.Errorf("%s %s: unexpected %s", kind, name, m.Type)
		}
		if err != nil {
			return err
		}
	}
}

// pushTrust starts pushing the trust document (roots and deny list, no
// gossip key) on a relay's or region's stream c, now and after every
// change, until ctx ends; it closes c when a push fails, which ends the
// caller's reader. write sends the caller's frames under the same lock.
func (s *Server) pushTrust(ctx context.Context, c net.Conn) (write func(*wire.Message) error) {
	var wmu sync.Mutex
	write = func(m *wire.Message) error {
		wmu.Lock()
		defer wmu.Unlock()
		c.SetWriteDeadline(time.Now().Add(30 * time.Second))
		return wire.Write(c, m)
	}
	go func() {
		defer c.Close()
		for {
			t, watch := s.sec.currentTrust()
			if err := write(&wire.Message{Type: wire.TypeTrust, Trust: relayTrust(t)}); err != nil {
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-watch:
			}
		}
	}()
	return write
}

// revokeRelay puts a relay on the deny list (`fogmesh relay revoke`): agents
// refuse its handshakes from then on, it can no longer renew, and its
// stream to this control plane is closed (and refused when it redials).
// The record's key ("relay:NAME") cannot be a node name.
func (s *Server) revokeRelay(name string) (string, error) {
	if !siteRE.MatchString(name) {
		return "", fmt.Errorf("relay %q is not a DNS label", name)
	}
	id, err := identity.RelayID(s.sec.ca.TrustDomain(), name)
	if err != nil {
		return "", err
	}
	if err := s.denyID("relay:"+name, id); err != nil {
		return "", err
	}
	n := s.closeStreams("relay:" + name)
	s.Audit(audit.Record{Kind: audit.KindAdmin, Action: "revoke relay", Actor: "admin", Object: id.String()})
	s.log.Warn("control: relay revoked", "relay", name, "id", id.String(), "closedStreams", n)
	return id.String(), nil
}

// denyID stores id's deny-list record under key and pushes the new trust
// document to every verifier that follows this control plane.
func (s *Server) denyID(key string, id spiffeid.ID) error {
	b, _ := json.Marshal(revokedRecord{ID: id.String(), At: time.Now().UTC()})
	if err := s.st.UpdateSecure(func(tx *store.SecureTx) error { return tx.Put(keyRevoked+key, b) }); err != nil {
		return err
	}
	return s.sec.refreshTrust()
}

// closeStreams closes the streams registered as who and returns how many.
func (s *Server) closeStreams(who string) int {
	n := 0
	s.mu.Lock()
	for c, w := range s.streams {
		if w == who {
			c.Close()
			n++
		}
	}
	s.mu.Unlock()
	return n
}
