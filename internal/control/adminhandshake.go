package control

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"time"

	"github.com/fogmesh/fogmesh/internal/identity"
)

// gatedTLSListener serves the admin API's TLS: it runs each accepted
// connection's handshake itself, holding a slot of gate for it, and hands
// net/http only connections whose handshake is done (net/http's own
// HandshakeContext on them returns at once). net/http would run the
// handshake in its per-connection goroutine, after Accept, where nothing
// bounds how many are in progress. A connection over a bound of gate is
// closed at once, before any TLS work; a handshake not done within timeout
// (a peer that never sends its ClientHello) is closed, freeing its slot;
// so is one the gate evicts when it is full (its source the busiest, the
// newcomer's holding fewer slots: identity.HandshakeGate).
type gatedTLSListener struct {
	net.Listener // the TCP listener
	cfg          *tls.Config
	gate         *identity.HandshakeGate
	timeout      time.Duration
	failure      func(reason string) // counts a refused or failed handshake
	log          *slog.Logger

	start sync.Once
	ready chan net.Conn // handshaken connections, for Accept
	errc  chan error    // the TCP listener's errors, for Accept
	done  chan struct{} // closed by Close
	close sync.Once
	wg    sync.WaitGroup // the accept loop and the handshakes

	mu      sync.Mutex
	pending map[net.Conn]struct{} // connections in their handshake
}

func newGatedTLSListener(ln net.Listener, cfg *tls.Config, gate *identity.HandshakeGate, timeout time.Duration,
	failure func(string), log *slog.Logger) *gatedTLSListener {
	return &gatedTLSListener{Listener: ln, cfg: cfg, gate: gate, timeout: timeout, failure: failure, log: log,
		ready: make(chan net.Conn), errc: make(chan error), done: make(chan struct{}),
		pending: map[net.Conn]struct{}{}}
}

// NewAdminTLSListener returns ln (a TCP listener) serving TLS with cfg as
// the admin API's does: under a handshake gate of the admin bounds
// maxHandshakes and perSource (as Config.AdminMaxHandshakes and
// AdminMaxHandshakesPerSource: 0 the default, negative no bound), each
// handshake done within 5 s, net/http given only connections whose
// handshake is done. cmd/fogmesh serves /healthz on it while the control
// plane waits for its store. failure, if not nil, counts a refused or
// failed handshake by reason (identity.Reason*). Close closes ln and the
// connections in their handshake.
func NewAdminTLSListener(ln net.Listener, cfg *tls.Config, maxHandshakes, perSource int,
	failure func(reason string), log *slog.Logger) net.Listener {
	if failure == nil {
		failure = func(string) {}
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return newGatedTLSListener(ln, cfg, newAdminGate(maxHandshakes, perSource), adminHandshakeTimeout, failure, log)
}

// newAdminGate is the admin API's handshake gate: bounds as
// Config.AdminMaxHandshakes and AdminMaxHandshakesPerSource (0: the
// default, negative: no bound).
func newAdminGate(maxHandshakes, perSource int) *identity.HandshakeGate {
	if maxHandshakes == 0 {
		maxHandshakes = DefaultAdminMaxHandshakes
	}
	if perSource == 0 {
		perSource = DefaultAdminMaxHandshakesPerSource
	}
	return identity.NewHandshakeGate(maxHandshakes, perSource)
}

// Accept returns the next connection whose handshake is done (a
// *tls.Conn), or the TCP listener's error.
func (l *gatedTLSListener) Accept() (net.Conn, error) {
	l.start.Do(func() {
		// Under mu, as Close closes done: a loop starts before Close's
		// wg.Wait or not at all (an Add racing that Wait is a data race,
		// and the loop would outlive Close).
		l.mu.Lock()
		defer l.mu.Unlock()
		select {
		case <-l.done:
			return
		default:
		}
		l.wg.Add(1)
		go l.acceptLoop()
	})
	select {
	case c := <-l.ready:
		return c, nil
	case err := <-l.errc:
		return nil, err
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *gatedTLSListener) acceptLoop() {
	defer l.wg.Done()
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			select { // net/http backs off from a temporary error and calls Accept again
			case l.errc <- err:
			case <-l.done:
				return
			}
			if te, ok := err.(interface{ Temporary() bool }); ok && te.Temporary() {
				continue
			}
			return
		}
		ev := identity.NewEvictable(c)
		slot, reason := l.gate.Enter(c.RemoteAddr(), ev.Evict)
		if slot == nil {
			// No goroutine, no TLS work; Debug: an attack must not flood
			// the log.
			c.Close()
			l.failure(reason)
			l.log.Debug("control: admin connection refused before its handshake", "remote", c.RemoteAddr(), "reason", reason)
			continue
		}
		l.mu.Lock()
		select {
		case <-l.done:
			l.mu.Unlock()
			slot.Release()
			c.Close()
			return
		default:
		}
		l.pending[c] = struct{}{}
		l.wg.Add(1)
		l.mu.Unlock()
		go l.handshake(c, slot.Release, ev)
	}
}

// handshake runs c's TLS handshake within the timeout, frees its slot
// when the handshake has finished or failed, and hands c to Accept unless
// release reports that the gate evicted it.
func (l *gatedTLSListener) handshake(c net.Conn, release func() bool, ev *identity.Evictable) {
	defer l.wg.Done()
	tc, err := l.safeHandshake(c, ev)
	held := release()
	l.mu.Lock()
	delete(l.pending, c)
	l.mu.Unlock()
	if err == nil && !held { // evicted as it finished: its cancel closes c now or soon
		select {
		case <-l.done: // closed by Close
		default:
			l.failure(identity.ReasonEvicted)
		}
		l.log.Debug("control: admin TLS handshake failed", "remote", c.RemoteAddr(), "reason", identity.ReasonEvicted, "err", identity.ErrEvicted)
		err = identity.ErrEvicted
	}
	if err != nil {
		c.Close()
		return
	}
	select {
	case l.ready <- tc:
	case <-l.done:
		tc.Close()
	}
}

// safeHandshake is runHandshake with a panic in it (in a handshake
// callback: GetCertificate, VerifyPeerCertificate) recovered, logged,
// counted as "other" and returned as an error, so that one connection is
// dropped (and its slot freed) as net/http's conn.serve did when it ran the
// handshake, rather than the control plane.
func (l *gatedTLSListener) safeHandshake(c net.Conn, ev *identity.Evictable) (tc *tls.Conn, err error) {
	defer func() {
		if p := recover(); p != nil {
			l.failure(identity.ReasonOther)
			l.log.Error("control: panic in an admin TLS handshake", "remote", c.RemoteAddr(), "panic", p,
				"stack", string(debug.Stack()))
			tc, err = nil, fmt.Errorf("control: panic in the admin TLS handshake: %v", p)
		}
	}()
	return l.runHandshake(c, ev)
}

func (l *gatedTLSListener) runHandshake(c net.Conn, ev *identity.Evictable) (*tls.Conn, error) {
	c.SetDeadline(time.Now().Add(l.timeout))
	ctx, cancel := context.WithTimeout(context.Background(), l.timeout)
	defer cancel()
	tc := tls.Server(c, l.cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		var rhe tls.RecordHeaderError
		reason := identity.HandshakeReason(err)
		if ev.Evicted() { // closed by the gate for a fairer newcomer
			reason = identity.ReasonEvicted
		} else if errors.As(err, &rhe) {
			reason = identity.ReasonNotTLS
			if rhe.Conn != nil && looksLikeHTTP(rhe.RecordHeader) {
				// As net/http answers plaintext on its TLS port.
				io.WriteString(rhe.Conn, "HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
			}
		}
		select {
		case <-l.done: // closed by Close
		default:
			l.failure(reason)
		}
		l.log.Debug("control: admin TLS handshake failed", "remote", c.RemoteAddr(), "reason", reason, "err", err)
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return tc, nil
}

// looksLikeHTTP is net/http's test of a TLS record header that is the
// start of a plaintext request.
func looksLikeHTTP(hdr [5]byte) bool {
	switch string(hdr[:]) {
	case "GET /", "HEAD ", "POST ", "PUT /", "OPTIO":
		return true
	}
	return false
}

// Close closes the TCP listener and the connections in their handshake,
// and waits for the handshakes to end.
func (l *gatedTLSListener) Close() error {
	var err error
	l.close.Do(func() {
		l.mu.Lock()
		close(l.done)
		for c := range l.pending {
			c.Close()
		}
		l.mu.Unlock()
		err = l.Listener.Close()
		l.wg.Wait()
	})
	return err
}
