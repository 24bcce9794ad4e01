// Package benchpki makes the throwaway certificates the security benchmarks
// use: a CA and two leaves, ECDSA P-256, valid for a day, generated at run
// time so that no key is ever kept in the repository. Both leaves carry
// server and client auth so either end of a relay pair can present one
// (mutual TLS). Nothing here is fit for anything but a benchmark.
package benchpki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Names are the leaf names Generate creates; each leaf has the DNS SAN
// Name+".tlspair.invalid" and the IP SAN 127.0.0.1.
var Names = []string{"a", "b"}

// ServerName returns the name a client verifies the leaf called name with.
func ServerName(name string) string { return name + ".tlspair.invalid" }

// Set is a CA and its leaves.
type Set struct {
	CAPEM  []byte            // the CA certificate, PEM
	Pool   *x509.CertPool    // holds the CA only
	Leaves map[string]Leaf   // by name (Names)
	caKey  *ecdsa.PrivateKey // signs the leaves; never written out
}

// Leaf is one leaf certificate with its key, PEM and parsed.
type Leaf struct {
	CertPEM, KeyPEM []byte
	Cert            tls.Certificate
}

// Generate makes a fresh CA and the leaves named in Names.
func Generate() (*Set, error) {
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("benchpki: CA key: %w", err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "tlspair throwaway CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("benchpki: CA certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, fmt.Errorf("benchpki: CA certificate: %w", err)
	}
	s := &Set{
		CAPEM:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		Pool:   x509.NewCertPool(),
		Leaves: make(map[string]Leaf, len(Names)),
		caKey:  caKey,
	}
	s.Pool.AddCert(ca)
	for _, name := range Names {
		l, err := s.leaf(ca, name, now)
		if err != nil {
			return nil, err
		}
		s.Leaves[name] = l
	}
	return s, nil
}

func (s *Set) leaf(ca *x509.Certificate, name string, now time.Time) (Leaf, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Leaf{}, fmt.Errorf("benchpki: %s key: %w", name, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: ServerName(name)},
		DNSNames:     []string{ServerName(name)},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, s.caKey)
	if err != nil {
		return Leaf{}, fmt.Errorf("benchpki: %s certificate: %w", name, err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return Leaf{}, fmt.Errorf("benchpki: %s key: %w", name, err)
	}
	l := Leaf{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}),
	}
	if l.Cert, err = tls.X509KeyPair(l.CertPEM, l.KeyPEM); err != nil {
		return Leaf{}, fmt.Errorf("benchpki: %s key pair: %w", name, err)
	}
	return l, nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}

// WriteDir writes ca.pem and, per leaf, NAME.pem and NAME-key.pem into dir,
// creating it with mode 0700. Keys are written with mode 0600; existing
// files are not overwritten.
func (s *Set) WriteDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("benchpki: %w", err)
	}
	type file struct {
		name string
		data []byte
		mode os.FileMode
	}
	files := []file{{"ca.pem", s.CAPEM, 0o644}}
	for _, name := range Names {
		l := s.Leaves[name]
		files = append(files, file{name + ".pem", l.CertPEM, 0o644}, file{name + "-key.pem", l.KeyPEM, 0o600})
	}
	for _, f := range files {
		if err := writeNew(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return err
		}
	}
	return nil
}

func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("benchpki: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("benchpki: write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("benchpki: write %s: %w", path, err)
	}
	return nil
}

// LoadDir reads what WriteDir wrote: the CA pool and the leaf called name.
func LoadDir(dir, name string) (*x509.CertPool, tls.Certificate, error) {
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		return nil, tls.Certificate{}, fmt.Errorf("benchpki: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, tls.Certificate{}, fmt.Errorf("benchpki: no certificate in %s", filepath.Join(dir, "ca.pem"))
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem"))
	if err != nil {
		return nil, tls.Certificate{}, fmt.Errorf("benchpki: %w", err)
	}
	return pool, cert, nil
}

// ServerConfig is the TLS 1.3 server side of mutual TLS with leaf name:
// it requires a client certificate signed by the CA.
func ServerConfig(pool *x509.CertPool, cert tls.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		MaxVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
	}
}

// ClientConfig is the TLS 1.3 client side of mutual TLS: it presents cert
// and verifies the server as peer (a name in Names).
func ClientConfig(pool *x509.CertPool, cert tls.Certificate, peer string) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		MaxVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		ServerName:   ServerName(peer),
	}
}
