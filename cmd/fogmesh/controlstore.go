package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/fogmesh/fogmesh/internal/cli"
	"github.com/fogmesh/fogmesh/internal/store"
	"github.com/fogmesh/fogmesh/internal/store/etcdstore"
)

// openControlStore opens the store fc names: nil for the default bbolt
// file (control.New opens it), or the shared etcd store for replicas.
func openControlStore(fc *controlFile, log *slog.Logger) (store.Backend, error) {
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
	o := etcdstore.Options{Endpoints: eps, Prefix: fc.EtcdPrefix, Name: fc.Name, Logger: log, Username: fc.EtcdUsername, MaxTxnOps: fc.EtcdMaxTxnOps}
	if ttl := time.Duration(fc.EtcdSessionTTL); ttl != 0 {
		if ttl < time.Second || ttl%time.Second != 0 {
			return nil, cli.Usagef("etcd session TTL %v: want whole seconds, at least 1s", ttl)
		}
		o.LeaseTTL = int(ttl / time.Second)
	}
	if fc.EtcdCAFile != "" || fc.EtcdCertFile != "" {
		tc, err := etcdTLS(fc)
		if err != nil {
			return nil, err
		}
		o.TLS = tc
	}
	if fc.EtcdPasswordFile != "" {
		b, err := os.ReadFile(fc.EtcdPasswordFile)
		if err != nil {
			return nil, fmt.Errorf("etcd password: %w", err)
		}
		o.Password = strings.TrimSpace(string(b))
	}
	if fc.Name == "" {
		log.Warn("control: -store etcd without -name: every replica needs its own name (audit chain, election)")
	}
	st, err := etcdstore.Open(o)
	if err != nil {
		return nil, fmt.Errorf("control: %w", err)
	}
	return st, nil
}

func etcdTLS(fc *controlFile) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if fc.EtcdCAFile != "" {
		b, err := os.ReadFile(fc.EtcdCAFile)
		if err != nil {
			return nil, fmt.Errorf("etcd CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("etcd CA %s: no PEM certificate", fc.EtcdCAFile)
		}
		tc.RootCAs = pool
	}
	if (fc.EtcdCertFile == "") != (fc.EtcdKeyFile == "") {
		return nil, errors.New("etcd client certificate and key go together")
	}
	if fc.EtcdCertFile != "" {
		c, err := tls.LoadX509KeyPair(fc.EtcdCertFile, fc.EtcdKeyFile)
		if err != nil {
			return nil, fmt.Errorf("etcd client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{c}
	}
	return tc, nil
}
