package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fogmesh/fogmesh/internal/control"
	"github.com/fogmesh/fogmesh/internal/store"
)

// A replica on etcd starts while etcd is down (issue 13): it binds its
// listeners, answers /healthz with 503 and the reason, refuses agents (so
// they move to a replica that serves), and opens the store again with a
// backoff until it works; then the control plane starts on the same
// listeners. Errors retrying cannot fix end the wait at once.

// Backoff between attempts at opening the store.
const (
	storeRetryFirst = 200 * time.Millisecond
	storeRetryMax   = 5 * time.Second
)

// waitStore calls open until it returns a store, an *etcdConfigError, or
// ctx ends (nil, nil: a signal while waiting is a clean exit). Meanwhile
// adminLn serves /healthz as not ready (with a throwaway self-signed
// certificate unless fc.Insecure: nothing but the health answer is served;
// its TLS handshakes under the admin API's gate, of fc's admin bounds) and
// connections to syncLn are closed at once. Both listeners are open and
// idle when it returns.
func waitStore(ctx context.Context, log *slog.Logger, adminLn, syncLn net.Listener, fc *controlFile, open func() (store.Backend, error)) (store.Backend, error) {
	// The gate answers from the start: one attempt can take the store's
	// whole timeout.
	g, err := startGate(log, adminLn, syncLn, fc)
	if err != nil {
		return nil, err
	}
	defer g.stop()
	start := time.Now()
	st, err := open()
	if err == nil {
		return st, nil
	}
	var cfgErr *etcdConfigError
	if errors.As(err, &cfgErr) {
		return nil, err
	}
	wait := storeRetryFirst
	for attempt := 1; ; attempt++ {
		g.reason.Store(fmt.Sprintf("not ready: waiting for the store since %s (attempt %d): %v", start.UTC().Format(time.RFC3339), attempt, err))
		// ±20% jitter: replicas restarted together do not retry in step.
		d := time.Duration(float64(wait) * (0.8 + 0.4*mrand.Float64()))
		log.Warn("control: the store is unreachable; not ready, retrying", "attempt", attempt, "retryIn", d.Round(time.Millisecond), "err", err)
		select {
		case <-ctx.Done():
			return nil, nil
		case <-time.After(d):
		}
		wait = min(2*wait, storeRetryMax)
		if st, err = open(); err == nil {
			log.Info("control: the store answers; starting", "attempts", attempt+1, "waited", time.Since(start).Round(time.Millisecond))
			return st, nil
		}
		if errors.As(err, &cfgErr) {
			return nil, err
		}
	}
}

// gate serves the listeners while the store is unreachable.
type gate struct {
	admin, sync deadliner
	srv         *http.Server
	reason      atomic.Value // string
	stopSync    chan struct{}
	wg          sync.WaitGroup
}

// deadliner is a listener whose Accept can be woken without closing it
// (*net.TCPListener, *net.UnixListener).
type deadliner interface {
	net.Listener
	SetDeadline(time.Time) error
}

// paused is a listener whose Close only wakes Accept, so that the gate's
// HTTP server can shut down and leave the socket to the control plane.
type paused struct{ deadliner }

func (p paused) Close() error { return p.SetDeadline(time.Unix(1, 0)) }

func startGate(log *slog.Logger, adminLn, syncLn net.Listener, fc *controlFile) (*gate, error) {
	a, ok1 := adminLn.(deadliner)
	s, ok2 := syncLn.(deadliner)
	if !ok1 || !ok2 {
		return nil, fmt.Errorf("control: listeners %T, %T cannot be paused", adminLn, syncLn)
	}
	g := &gate{admin: a, sync: s, stopSync: make(chan struct{})}
	g.reason.Store("not ready: waiting for the store")
	var ln net.Listener = paused{a}
	if !fc.Insecure {
		cert, err := selfSigned()
		if err != nil {
			return nil, err
		}
		// As the admin API's: a bound on the handshakes in progress (in
		// all and from one source) and a deadline on each, so that
		// connections that never send a ClientHello cannot pile up while
		// the store is down. Refusals are logged at Debug; no metrics are
		// served yet.
		ln = control.NewAdminTLSListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
			fc.AdminMaxHandshakes, fc.AdminMaxHandshakesPerSource, nil, log)
	}
	g.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, g.reason.Load().(string), http.StatusServiceUnavailable)
		}),
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	g.wg.Add(2)
	go func() {
		defer g.wg.Done()
		g.srv.Serve(ln)
	}()
	go g.refuseAgents()
	return g, nil
}

// refuseAgents closes every sync connection at once: an agent then tries
// its next control plane address instead of waiting for a handshake.
func (g *gate) refuseAgents() {
	defer g.wg.Done()
	for {
		c, err := g.sync.Accept()
		if err != nil {
			select {
			case <-g.stopSync:
				return
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return // closed
		}
		c.Close()
	}
}

// stop ends the gate and leaves both listeners open, their deadlines
// cleared.
func (g *gate) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	g.srv.Shutdown(ctx)
	close(g.stopSync)
	g.sync.SetDeadline(time.Unix(1, 0))
	g.wg.Wait()
	g.admin.SetDeadline(time.Time{})
	g.sync.SetDeadline(time.Time{})
}

// selfSigned is the gate's certificate: clients that verify it fail, which
// is right, for nothing but "not ready" is served; probes that do not
// verify (curl -k, kubelet) read the reason.
func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fogmesh control (waiting for its store)"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("control: gate certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
