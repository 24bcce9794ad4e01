package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/relay"
)

// relayIdentity issues a node certificate from ca into an identity
// source, as an agent would hold it.
func relayIdentity(t *testing.T, ca *identity.CA, site, node string) *identity.Source {
	t.Helper()
	src, err := ca.NodeSource(site, node)
	if err != nil {
		t.Fatal(err)
	}
	return src
}

// TestRelayCommand: `fogmesh relay` starts from certificate, bundle and
// deny files, writes its -addr-file, serves /healthz and /metrics, lets a
// node of the mesh CA connect and learn its reflexive TCP and UDP
// addresses, follows a new deny file by disconnecting the revoked node,
// and exits 0 on SIGTERM. Missing files are a usage error (exit 2).
func TestRelayCommand(t *testing.T) {
	if out, code := run(t, "relay", "-addr", any0, "-admin-addr", any0); code != 2 || !strings.Contains(out, "required") {
		t.Fatalf("no certificate: exit %d\n%s", code, out)
	}

	dir := t.TempDir()
	ca, err := identity.OpenCA(identity.CAConfig{Dir: filepath.Join(dir, "ca")})
	if err != nil {
		t.Fatal(err)
	}
	rsrc := relayIdentity(t, ca, "relay", "r1")
	keyPEM, err := identity.EncodeKeyPEM(rsrc.SVID().PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{
		"cert.pem":   identity.EncodeCertificatesPEM(rsrc.SVID().Certificates...),
		"key.pem":    keyPEM,
		"bundle.pem": identity.EncodeCertificatesPEM(ca.Roots()...),
		"deny":       []byte("# revoked nodes\n"),
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	p, addrs := startAddrs(t, "relay", "-addr", any0, "-udp-addr", any0, "-admin-addr", any0,
		"-cert", filepath.Join(dir, "cert.pem"), "-key", filepath.Join(dir, "key.pem"),
		"-bundle", filepath.Join(dir, "bundle.pem"), "-deny-file", filepath.Join(dir, "deny"),
		"-reload-interval", "50ms")
	if addrs["relay"] == "" || addrs["udp"] == "" || addrs["admin"] == "" {
		t.Fatalf("addr-file %v", addrs)
	}
	waitProcHTTP(t, p, "http://"+addrs["admin"]+"/healthz")
	metricsURL := "http://" + addrs["admin"] + "/metrics"

	x := relayIdentity(t, ca, "site-a", "x")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := relay.DialClient(ctx, addrs["relay"], x.ClientConfig(relay.AuthorizeRelay(ca.TrustDomain())))
	if err != nil {
		t.Fatalf("%v\n%s", err, p.out)
	}
	defer c.Close()
	if c.Hello().Node != x.SVID().ID.String() || !strings.HasPrefix(c.Hello().Observed, "127.0.0.1:") {
		t.Fatalf("hello %+v", c.Hello())
	}
	pc, err := net.ListenPacket("udp", any0)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	ua, err := net.ResolveUDPAddr("udp", addrs["udp"])
	if err != nil {
		t.Fatal(err)
	}
	if ap, err := c.UDPReflexive(ctx, pc, ua); err != nil || ap.String() != pc.LocalAddr().String() {
		t.Fatalf("udp reflexive %v %v, want %s", ap, err, pc.LocalAddr())
	}
	if got := metric(t, nil, metricsURL, "fogmesh_relay_nodes_connected"); got != 1 {
		t.Fatalf("nodes_connected %v", got)
	}

	// Revoke x in the deny file: the relay closes its connection.
	if err := os.WriteFile(filepath.Join(dir, "deny"), []byte(x.SVID().ID.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Done():
	case <-time.After(20 * time.Second):
		t.Fatalf("revoked node still connected\n%s", p.out)
	}
	if got := metric(t, nil, metricsURL, `fogmesh_relay_refused_total{reason="revoked_live"}`); got != 1 {
		t.Fatalf("revoked_live %v", got)
	}
	if _, err := relay.DialClient(ctx, addrs["relay"], x.ClientConfig(relay.AuthorizeRelay(ca.TrustDomain()))); err == nil {
		t.Fatal("revoked node reconnected")
	}

	p.stopsOnSIGTERM(t, "relay", 20*time.Second)
}
