package identity

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCAStateNonCARootRefused: a CA state (ca.json, read back at start
// and shared between replicas) whose active or previous root is not a CA
// certificate is refused with an error naming it. Before, a leaf
// certificate matching the key named loaded as the active root: the
// control plane started and issued certificates no verifier accepts.
func TestCAStateNonCARootRefused(t *testing.T) {
	dir := t.TempDir()
	if _, err := OpenCA(CAConfig{Dir: dir}); err != nil {
		t.Fatal(err)
	}
	good, err := os.ReadFile(filepath.Join(dir, CAStateFile))
	if err != nil {
		t.Fatal(err)
	}
	key, _ := NewKey()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "not a CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	kp, _ := EncodeKeyPEM(key)
	if err := os.WriteFile(filepath.Join(dir, "leaf-key.pem"), kp, 0o600); err != nil {
		t.Fatal(err)
	}
	var st caState
	json.Unmarshal(good, &st)
	active := st
	active.Active, active.KeyFile = string(EncodeCertificatesPEM(leaf)), "leaf-key.pem"
	prev := st
	prev.Previous = []prevState{{Cert: string(EncodeCertificatesPEM(leaf)), Until: time.Now().Add(time.Hour)}}
	for name, bad := range map[string]caState{"active": active, "previous": prev} {
		b, _ := json.Marshal(&bad)
		if err := os.WriteFile(filepath.Join(dir, CAStateFile), b, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := OpenCA(CAConfig{Dir: dir}); err == nil || !strings.Contains(err.Error(), "not a CA") {
			t.Errorf("%s root not a CA: %v", name, err)
		}
		files := map[string][]byte{CAStateFile: b, "leaf-key.pem": kp, st.KeyFile: mustRead(t, filepath.Join(dir, st.KeyFile))}
		if err := CheckCAFiles("", files); err == nil {
			t.Errorf("%s root not a CA: shared CA files taken", name)
		}
	}
}

func mustRead(t *testing.T, p string) []byte {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCAStateOtherTrustDomainRefused: a CA state whose active or previous
// root is not the root of the configured trust domain (its URI SAN
// spiffe://<td>, as rotate writes it) is refused with an error naming it,
// at start and as shared CA files. Before, another trust domain's root
// and key loaded: the control plane issued certificates of its trust
// domain under a root that names another.
func TestCAStateOtherTrustDomainRefused(t *testing.T) {
	dir, odir := t.TempDir(), t.TempDir()
	if _, err := OpenCA(CAConfig{Dir: dir}); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenCA(CAConfig{Dir: odir, TrustDomain: "other.example"}); err != nil {
		t.Fatal(err)
	}
	var st, ost caState
	json.Unmarshal(mustRead(t, filepath.Join(dir, CAStateFile)), &st)
	json.Unmarshal(mustRead(t, filepath.Join(odir, CAStateFile)), &ost)
	okey := mustRead(t, filepath.Join(odir, ost.KeyFile))
	if err := os.WriteFile(filepath.Join(dir, ost.KeyFile), okey, 0o600); err != nil {
		t.Fatal(err)
	}
	active := st
	active.Active, active.KeyFile = ost.Active, ost.KeyFile
	prev := st
	prev.Previous = []prevState{{Cert: ost.Active, Until: time.Now().Add(time.Hour)}}
	for name, bad := range map[string]caState{"active": active, "previous": prev} {
		b, _ := json.Marshal(&bad)
		if err := os.WriteFile(filepath.Join(dir, CAStateFile), b, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := OpenCA(CAConfig{Dir: dir}); err == nil || !strings.Contains(err.Error(), "spiffe://other.example") {
			t.Errorf("%s root of other.example: %v", name, err)
		}
		files := map[string][]byte{CAStateFile: b, ost.KeyFile: okey, st.KeyFile: mustRead(t, filepath.Join(dir, st.KeyFile))}
		if err := CheckCAFiles("", files); err == nil {
			t.Errorf("%s root of other.example: shared CA files taken", name)
		}
	}
}
