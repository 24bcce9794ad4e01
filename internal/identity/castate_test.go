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
