package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/enroll"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/relay"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// joinNode joins a node as an agent does (the shared enroll client, real
// control plane) and returns its identity source.
func joinNode(t *testing.T, syncAddr, token, site, name string) *identity.Source {
	t.Helper()
	tok, err := enroll.ParseToken(token, identity.TokenJoin)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := identity.NewKey()
	csr, _ := identity.NewCSR(key)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	node := &api.Node{Meta: api.Meta{Name: name}, Spec: api.NodeSpec{Site: site, Region: "r", MeshAddress: "127.0.0.1:1"}}
	resp, err := enroll.Join(ctx, enroll.DialTLS, []string{syncAddr}, tok, &wire.Message{Node: node, CSR: csr}, slog.New(slog.DiscardHandler), "test", 0)
	if err != nil {
		t.Fatal(err)
	}
	certs, _ := identity.ParseDERs(resp.Certificates)
	svid, err := identity.NewSVID(certs, key)
	if err != nil {
		t.Fatal(err)
	}
	roots, _ := identity.ParseDERs(resp.Trust.Bundles[resp.Trust.TrustDomain])
	src := identity.NewSource()
	src.SetSVID(svid)
	src.SetBundles(x509bundle.FromX509Authorities(svid.ID.TrustDomain(), roots))
	src.SetDenied(resp.Trust.Revoked) // as an agent starts from the trust it joined with
	return src
}

// relayLeaf reads the relay certificate (leaf) in a relay's state dir.
func relayLeaf(t *testing.T, dir string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, relay.MemberCertFile))
	if err != nil {
		t.Fatal(err)
	}
	certs, err := identity.ParseCertificatesPEM(b)
	if err != nil {
		t.Fatal(err)
	}
	return certs[0]
}

// TestRelayJoinsMesh: real control plane (secure by default) and real
// relay processes. A relay joins with a relay token (`fogmesh token create
// -kind relay`) and gets spiffe://<td>/relay/<name>, stored with a 0600 key;
// an agent's join token is refused for a relay and a relay token for an
// agent (exit 2, naming the right kind). A node revoked with `fogmesh node
// revoke` is disconnected by the relay within 5 s, with no deny file; a
// restart needs no token; the certificate is renewed through the control
// plane before it expires (node TTL 20s here) and new handshakes present
// the renewed one.
func TestRelayJoinsMesh(t *testing.T) {
	state := t.TempDir()
	cp, ca := startAddrs(t, "control", "-state-dir", state, "-admin-addr", any0, "-sync-addr", any0, "-node-ttl", "20s")
	syncAddr := ca["sync"]
	flags := secureAdmin(t, cp, state, ca["admin"])
	token := func(args ...string) string {
		t.Helper()
		out, code := run(t, append(append([]string{"token", "create"}, args...), flags...)...)
		if code != 0 {
			t.Fatalf("token create %v: %s", args, out)
		}
		return strings.TrimSpace(out)
	}
	relayArgs := func(dir string, extra ...string) []string {
		return append([]string{"relay", "-control", syncAddr, "-state-dir", dir, "-addr", any0, "-udp-addr", any0, "-admin-addr", any0}, extra...)
	}

	// The wrong kind of token is refused, before anything is stored.
	joinTok := token("-site", "s1")
	dir := t.TempDir()
	if out, code := run(t, relayArgs(dir, "-name", "r1", "-join-token", joinTok)...); code != 2 || !strings.Contains(out, "not a relay token") {
		t.Fatalf("relay with an agent's join token: exit %d\n%s", code, out)
	}
	if _, err := os.Stat(filepath.Join(dir, relay.MemberCertFile)); err == nil {
		t.Fatal("a certificate was saved after a refused join")
	}
	relayTok := token("-kind", "relay")
	if !strings.HasPrefix(relayTok, "fmr1.") {
		t.Fatalf("relay token %q", relayTok)
	}
	if out, code := run(t, "agent", "-name", "n9", "-site", "s1", "-region", "r", "-control", syncAddr, "-join-token", relayTok,
		"-state-dir", t.TempDir(), "-admin-addr", any0, "-dns-addr", any0, "-mesh-addr", any0, "-vip-range", "127.141.0.0/16"); code != 2 || !strings.Contains(out, "this is a relay token") {
		t.Fatalf("agent with a relay token: exit %d\n%s", code, out)
	}
	if out, code := run(t, relayArgs(t.TempDir(), "-name", "r1")...); code != 2 || !strings.Contains(out, "no usable relay certificate") {
		t.Fatalf("relay without certificate or token: exit %d\n%s", code, out)
	}
	if out, code := run(t, "relay", "-control", syncAddr, "-cert", "c.pem", "-addr", any0); code != 2 || !strings.Contains(out, "do not go together") {
		t.Fatalf("-control with -cert: exit %d\n%s", code, out)
	}

	// The relay joins.
	p, addrs := startAddrs(t, relayArgs(dir, "-name", "r1", "-join-token", relayTok)...)
	metricsURL := "http://" + addrs["admin"] + "/metrics"
	waitProcHTTP(t, p, "http://"+addrs["admin"]+"/healthz")
	leaf := relayLeaf(t, dir)
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != "spiffe://fogmesh.local/relay/r1" {
		t.Fatalf("relay certificate for %v", leaf.URIs)
	}
	if fi, err := os.Stat(filepath.Join(dir, relay.MemberKeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("relay key: %v %v", fi, err)
	}
	var tr wire.Trust
	if b, err := os.ReadFile(filepath.Join(dir, relay.MemberTrustFile)); err != nil || json.Unmarshal(b, &tr) != nil || len(tr.GossipKey) != 0 || len(tr.Bundles) == 0 {
		t.Fatalf("relay trust.json: %v %+v", err, tr)
	}
	eventually(t, 20*time.Second, "the relay never connected its control plane stream", func() bool {
		return metric(t, nil, metricsURL, "fogmesh_relay_control_connected") == 1
	})

	// A node of the mesh connects; it authorises the relay's identity.
	x := joinNode(t, syncAddr, token("-site", "s1"), "s1", "x")
	td := x.SVID().ID.TrustDomain()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := relay.DialClient(ctx, addrs["relay"], x.ClientConfig(relay.AuthorizeRelay(td)))
	if err != nil {
		t.Fatalf("node x to the relay: %v\n%s", err, p.out)
	}
	defer c.Close()
	doc := filepath.Join(t.TempDir(), "node.yaml")
	os.WriteFile(doc, []byte("apiVersion: fogmesh.io/v1alpha1\nkind: Node\nmetadata: {name: x}\nspec: {site: s1, region: r, meshAddress: \"127.0.0.1:1\"}\n"), 0o644)
	if out, code := run(t, append([]string{"apply", "-f", doc}, flags...)...); code != 0 {
		t.Fatalf("apply node x: %s", out)
	}

	// Revoked through the control plane: the relay drops it within 5 s.
	if out, code := run(t, append([]string{"node", "revoke", "x"}, flags...)...); code != 0 {
		t.Fatalf("node revoke: %s", out)
	}
	revokedAt := time.Now()
	select {
	case <-c.Done():
		t.Logf("revoked node disconnected %v after the revocation", time.Since(revokedAt).Round(time.Millisecond))
	case <-time.After(5 * time.Second):
		t.Fatalf("revoked node still connected 5 s after the revocation\n%s", p.out)
	}
	if got := metric(t, nil, metricsURL, `fogmesh_relay_refused_total{reason="revoked_live"}`); got != 1 {
		t.Fatalf("revoked_live %v", got)
	}
	if _, err := relay.DialClient(ctx, addrs["relay"], x.ClientConfig(relay.AuthorizeRelay(td))); err == nil {
		t.Fatal("revoked node reconnected")
	}

	// A restart needs no token; the name must match the certificate.
	p.stopsOnSIGTERM(t, "relay", 20*time.Second)
	if out, code := run(t, relayArgs(dir, "-name", "r2")...); code != 2 || !strings.Contains(out, `for relay "r1"`) {
		t.Fatalf("restart under another name: exit %d\n%s", code, out)
	}
	p, addrs = startAddrs(t, relayArgs(dir)...)
	metricsURL = "http://" + addrs["admin"] + "/metrics"
	waitProcHTTP(t, p, "http://"+addrs["admin"]+"/healthz")
	eventually(t, 20*time.Second, "the restarted relay never connected its control plane stream", func() bool {
		return metric(t, nil, metricsURL, "fogmesh_relay_control_connected") == 1
	})
	if _, err := relay.DialClient(ctx, addrs["relay"], x.ClientConfig(relay.AuthorizeRelay(td))); err == nil {
		t.Fatal("revoked node connected after the restart")
	}

	// Renewal before expiry (20s lifetime: at about 10s), through the
	// control plane; new handshakes present the renewed certificate.
	eventually(t, 30*time.Second, "the relay certificate was never renewed", func() bool {
		return metric(t, nil, metricsURL, "fogmesh_relay_certificate_renewals_total") >= 1
	})
	renewed := relayLeaf(t, dir)
	if renewed.SerialNumber.Cmp(leaf.SerialNumber) == 0 || !renewed.NotAfter.After(leaf.NotAfter) {
		t.Fatalf("relay-cert.pem not renewed: serial %s until %s", renewed.SerialNumber, renewed.NotAfter)
	}
	y := joinNode(t, syncAddr, token("-site", "s1"), "s1", "y")
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addrs["relay"])
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(raw, y.ClientConfig(relay.AuthorizeRelay(td), relay.ALPNControl))
	defer tc.Close()
	if err := tc.HandshakeContext(ctx); err != nil {
		t.Fatalf("node y to the renewed relay: %v", err)
	}
	if got := tc.ConnectionState().PeerCertificates[0]; got.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Fatalf("the relay still presents its first certificate (serial %s)", got.SerialNumber)
	}

	// Revoked (its key stolen, say): the control plane closes its stream
	// and refuses it when it redials (it could renew for good otherwise),
	// and a node that knows the deny list refuses the relay.
	ended := func() int { return strings.Count(p.out.String(), "relay: control plane stream ended") }
	before := ended()
	out, code := run(t, append([]string{"relay", "revoke", "r1"}, flags...)...)
	if code != 0 || !strings.Contains(out, "spiffe://fogmesh.local/relay/r1") {
		t.Fatalf("relay revoke: exit %d\n%s", code, out)
	}
	eventually(t, 30*time.Second, "the revoked relay's stream did not end and fail again on its redial", func() bool {
		return ended() >= before+2 && metric(t, nil, metricsURL, "fogmesh_relay_control_connected") == 0
	})
	z := joinNode(t, syncAddr, token("-site", "s1"), "s1", "z")
	if _, err := relay.DialClient(ctx, addrs["relay"], z.ClientConfig(relay.AuthorizeRelay(td))); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("a node that knows the deny list to the revoked relay: %v, want a refusal naming the revocation", err)
	}
	if out, code := run(t, append([]string{"relay", "revoke", "no such/relay"}, flags...)...); code == 0 {
		t.Fatalf("relay revoke of an invalid name: exit 0\n%s", out)
	}
}
