package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/fogmesh/fogmesh/internal/cli"
	"github.com/fogmesh/fogmesh/internal/store"
	"github.com/fogmesh/fogmesh/internal/store/etcdstore"
)

// etcdOptions checks the etcd flags of fc and reads the files they name;
// nil options for the default bbolt file (control.New opens it).
func etcdOptions(fc *controlFile, log *slog.Logger) (*etcdstore.Options, error) {
	if fc.EtcdSessionTTL < 0 { // whatever the store, as control.Config's durations
		return nil, cli.Usagef("etcdSessionTTL %s is negative (0 or unset: the default)", time.Duration(fc.EtcdSessionTTL))
	}
	switch fc.Store {
	case "", "bbolt":
		if len(fc.EtcdEndpoints) > 0 {
			return nil, cli.Usagef("etcd endpoints given without -store etcd")
		}
		return nil, nil
	case "etcd":
	default:
		return nil, cli.Usagef("unknown store %q (want bbolt or etcd)", fc.Store)
	}
	var eps []string
	for _, e := range fc.EtcdEndpoints {
		if e = strings.TrimSpace(e); e != "" {
			eps = append(eps, e)
		}
	}
	if len(eps) == 0 {
		return nil, cli.Usagef("-store etcd needs -etcd-endpoints")
	}
	o := &etcdstore.Options{Endpoints: eps, Prefix: fc.EtcdPrefix, Name: fc.Name, Logger: log, Username: fc.EtcdUsername, MaxTxnOps: fc.EtcdMaxTxnOps}
	if ttl := time.Duration(fc.EtcdSessionTTL); ttl != 0 {
		if ttl < time.Second || ttl%time.Second != 0 {
			return nil, cli.Usagef("etcdSessionTTL %v: want whole seconds, at least 1s", ttl)
		}
		o.LeaseTTL = int(ttl / time.Second)
	}
	if fc.EtcdCAFile != "" || fc.EtcdCertFile != "" || fc.EtcdKeyFile != "" {
		tc, err := etcdTLS(fc)
		if err != nil {
			return nil, err
		}
		o.TLS = tc
	}
	if (fc.EtcdUsername == "") != (fc.EtcdPasswordFile == "") {
		return nil, cli.Usagef("-etcd-username and -etcd-password-file go together")
	}
	if fc.EtcdPasswordFile != "" {
		b, err := os.ReadFile(fc.EtcdPasswordFile)
		if err != nil {
			return nil, fmt.Errorf("etcd password (-etcd-password-file): %w", err)
		}
		o.Password = strings.TrimSpace(string(b))
	}
	if fc.Name == "" {
		log.Warn("control: -store etcd without -name: every replica needs its own name (audit chain, election)")
	}
	return o, nil
}

// openEtcd makes one attempt at opening the etcd store. Errors retrying
// cannot fix (etcd's certificate not signed by -etcd-ca, a client
// certificate etcd refuses, a refused password) are returned as
// *etcdConfigError naming the flag to fix; any other error means etcd did
// not answer (store.ErrUnavailable), and the caller tries again.
func openEtcd(o *etcdstore.Options, fc *controlFile) (store.Backend, error) {
	if o.TLS != nil {
		if err := checkEtcdTLS(o.Endpoints, o.TLS, fc); err != nil {
			return nil, err
		}
	}
	st, err := etcdstore.Open(*o)
	switch {
	case err == nil:
		return st, nil
	case errors.Is(err, rpctypes.ErrAuthFailed):
		return nil, &etcdConfigError{fmt.Errorf("etcd refused user %q with the password in -etcd-password-file %s: %w", fc.EtcdUsername, fc.EtcdPasswordFile, err)}
	case errors.Is(err, rpctypes.ErrPermissionDenied), errors.Is(err, rpctypes.ErrUserEmpty):
		return nil, &etcdConfigError{fmt.Errorf("etcd user %q (-etcd-username) may not read and write under the prefix %q: grant its role readwrite there: %w", cmpOr(fc.EtcdUsername, "(none)"), cmpOr(o.Prefix, "/fogmesh/"), err)}
	}
	return nil, fmt.Errorf("control: %w", err)
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// etcdConfigError is an etcd error that retrying cannot fix.
type etcdConfigError struct{ err error }

func (e *etcdConfigError) Error() string { return e.err.Error() }
func (e *etcdConfigError) Unwrap() error { return e.err }

func etcdTLS(fc *controlFile) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if fc.EtcdCAFile != "" {
		b, err := os.ReadFile(fc.EtcdCAFile)
		if err != nil {
			return nil, fmt.Errorf("etcd CA (-etcd-ca): %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("etcd CA (-etcd-ca) %s: no PEM certificate", fc.EtcdCAFile)
		}
		tc.RootCAs = pool
	}
	if (fc.EtcdCertFile == "") != (fc.EtcdKeyFile == "") {
		return nil, cli.Usagef("-etcd-cert and -etcd-key go together")
	}
	if fc.EtcdCertFile != "" {
		c, err := tls.LoadX509KeyPair(fc.EtcdCertFile, fc.EtcdKeyFile)
		if err != nil {
			return nil, fmt.Errorf("etcd client certificate (-etcd-cert, -etcd-key): %w", err)
		}
		tc.Certificates = []tls.Certificate{c}
	}
	return tc, nil
}

// checkEtcdTLS makes one TLS handshake with each TLS endpoint, as etcd's
// client would, to name the flag at fault when it fails: etcd's client
// reports only a dial timeout. An endpoint that does not answer is not an
// error here (etcd may be starting).
func checkEtcdTLS(eps []string, tc *tls.Config, fc *controlFile) error {
	for _, ep := range eps {
		network, addr, host, ok := tlsEndpoint(ep)
		if !ok {
			continue
		}
		if err := etcdTLSError(ep, probeTLS(network, addr, host, tc), fc); err != nil {
			return err
		}
	}
	return nil
}

// tlsEndpoint splits a TLS etcd URL (https://host:port, unixs://path)
// into what to dial and the name etcd's certificate must carry (for a
// unix socket, as etcd's client does: the file name without its ":port").
func tlsEndpoint(ep string) (network, addr, host string, ok bool) {
	switch {
	case strings.HasPrefix(ep, "unixs://"):
		p := strings.TrimPrefix(ep, "unixs://")
		h, _, _ := strings.Cut(path.Base(p), ":")
		return "unix", p, h, true
	case strings.HasPrefix(ep, "https://"):
		u, err := url.Parse(ep)
		if err != nil {
			return "", "", "", false
		}
		return "tcp", u.Host, u.Hostname(), true
	}
	return "", "", "", false
}

// probeTLS returns the handshake's error, nil if it worked or nothing
// answered.
func probeTLS(network, addr, host string, tc *tls.Config) error {
	c, err := net.DialTimeout(network, addr, 2*time.Second)
	if err != nil {
		return nil // not answering: retried like any outage
	}
	defer c.Close()
	cfg := tc.Clone()
	if cfg.ServerName == "" {
		cfg.ServerName = host
	}
	cfg.NextProtos = []string{"h2"}
	tl := tls.Client(c, cfg)
	tl.SetDeadline(time.Now().Add(3 * time.Second))
	if err := tl.Handshake(); err != nil {
		return err
	}
	// With TLS 1.3 the server checks the client certificate after the
	// client's side of the handshake is done: its verdict (an alert, or
	// its HTTP/2 settings) comes with the first read.
	var b [1]byte
	if _, err := tl.Read(b[:]); err != nil && strings.Contains(err.Error(), "remote error") {
		return err
	}
	return nil
}

// etcdTLSError turns a handshake error into one naming the flag to fix;
// nil if err is nil or not about certificates.
func etcdTLSError(ep string, err error, fc *controlFile) error {
	if err == nil {
		return nil
	}
	var (
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		record   tls.RecordHeaderError
	)
	switch {
	case errors.As(err, &unknown) && fc.EtcdCAFile != "":
		err = fmt.Errorf("etcd at %s: its certificate is not signed by the CA in -etcd-ca %s: %w", ep, fc.EtcdCAFile, err)
	case errors.As(err, &unknown):
		err = fmt.Errorf("etcd at %s: its certificate is signed by no CA this host trusts: give etcd's CA with -etcd-ca: %w", ep, err)
	case errors.As(err, &hostname):
		err = fmt.Errorf("etcd at %s: its certificate does not name the host of the endpoint (-etcd-endpoints): %w", ep, err)
	case errors.As(err, &invalid):
		err = fmt.Errorf("etcd at %s: its certificate is not valid (-etcd-ca %s): %w", ep, fc.EtcdCAFile, err)
	case errors.As(err, &record):
		err = fmt.Errorf("etcd at %s does not speak TLS: use an http:// or unix:// endpoint, or serve TLS from etcd: %w", ep, err)
	case strings.Contains(err.Error(), "remote error") && fc.EtcdCertFile == "":
		err = fmt.Errorf("etcd at %s requires a client certificate: give -etcd-cert and -etcd-key: %w", ep, err)
	case strings.Contains(err.Error(), "remote error"):
		err = fmt.Errorf("etcd at %s refused the client certificate in -etcd-cert %s (signed by a CA etcd does not trust, or expired): %w", ep, fc.EtcdCertFile, err)
	default:
		return nil
	}
	return &etcdConfigError{err}
}
