package relay

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/identity"
)

// writeFiles writes src's certificate and key and ca's bundle to dir.
func writeFiles(t *testing.T, dir string, ca *identity.CA, src *identity.Source) Files {
	t.Helper()
	svid := src.SVID()
	key, err := identity.EncodeKeyPEM(svid.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	f := Files{CertFile: filepath.Join(dir, "cert.pem"), KeyFile: filepath.Join(dir, "key.pem"),
		BundleFile: filepath.Join(dir, "bundle.pem"), DenyFile: filepath.Join(dir, "deny")}
	for p, b := range map[string][]byte{
		f.CertFile:   identity.EncodeCertificatesPEM(svid.Certificates...),
		f.KeyFile:    key,
		f.BundleFile: identity.EncodeCertificatesPEM(ca.Roots()...),
		f.DenyFile:   []byte("# nobody yet\n"),
	} {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func TestParseDenyList(t *testing.T) {
	for _, c := range []struct {
		in, want, err string
	}{
		{"", "", ""},
		{"# c\nspiffe://fogmesh.local/site/a/node/x # revoked 2026-12-03\n\n  spiffe://fogmesh.local/site/b/node/y\n", "spiffe://fogmesh.local/site/a/node/x,spiffe://fogmesh.local/site/b/node/y", ""},
		{`{"trustDomain":"fogmesh.local","bundles":{},"revoked":["spiffe://fogmesh.local/site/a/node/x"]}`, "spiffe://fogmesh.local/site/a/node/x", ""},
		{"node-x\n", "", "line 1"},
		{`{"revoked":[1]}`, "", "trust JSON"},
	} {
		ids, err := ParseDenyList([]byte(c.in))
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%q: %v, want an error with %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil || strings.Join(ids, ",") != c.want {
			t.Errorf("%q: %v %v, want %s", c.in, ids, err, c.want)
		}
	}
}

// TestRelayWatchFilesRevokes: the relay started from files follows a new
// deny file: the revoked node's open connection is closed and it cannot
// come back; a broken deny file keeps the old list.
func TestRelayWatchFilesRevokes(t *testing.T) {
	ca := newCA(t)
	files := writeFiles(t, t.TempDir(), ca, source(t, ca, "relay", "r1"))
	src := identity.NewSource()
	denied, err := files.Load(src)
	if err != nil || len(denied) != 0 {
		t.Fatal(denied, err)
	}
	f := newFixture(t, func(c *Config) { c.Source = src })
	f.ca, f.td = ca, ca.TrustDomain()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.srv.WatchFiles(ctx, files, 10*time.Millisecond) }()
	defer func() { cancel(); <-done }()

	x := f.node("site-a", "x")
	if err := os.WriteFile(files.DenyFile, []byte(x.id+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	select {
	case <-x.c.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("the revoked node stayed connected")
	}
	if _, err := f.dial(x.src); err == nil {
		t.Fatal("the revoked node reconnected")
	}
	// A bad deny file is not applied: the old list stays.
	// Atomically (rename): a watcher that read the file half written (empty)
	// would see a valid, empty list.
	tmp := files.DenyFile + ".new"
	if err := os.WriteFile(tmp, []byte("not an id\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, files.DenyFile); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the bad deny file seen", func() bool { return f.metric("fogmesh_relay_reload_errors_total") >= 1 })
	if _, err := f.dial(x.src); err == nil {
		t.Fatal("a broken deny file lifted the revocation")
	}
	if !src.Denied(x.id) {
		t.Fatal("deny list lost")
	}
}
