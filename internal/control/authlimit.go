package control

import (
	"errors"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Failed admin authentication is throttled per client address: each
// refused token (a Bearer header, a UI login, a UI cookie) takes one of
// authFailBurst tokens, which come back one per authFailEvery. A client
// with none left gets 429 for every credential it offers, right or wrong,
// without the token being looked at or a line logged, until one comes
// back: guessing (and the warning each guess wrote) is bounded, and an
// admin certificate, checked in the TLS handshake, is never throttled.
const (
	authFailBurst = 10
	authFailEvery = 10 * time.Second
	// authFailClients bounds the addresses tracked; past it, those whose
	// tokens are all back (idle) are forgotten first.
	authFailClients = 4096
)

var errAuthThrottled = errors.New("too many refused credentials from this address: try again later")

type authLimiter struct {
	mu      sync.Mutex
	clients map[netip.Addr]*rate.Limiter
	now     func() time.Time
}

func newAuthLimiter() *authLimiter {
	return &authLimiter{clients: map[netip.Addr]*rate.Limiter{}, now: time.Now}
}

// clientAddr is the address a request's failures count against (IPv6 by
// /64: one host has many).
func clientAddr(r *http.Request) netip.Addr {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}
	}
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}

// throttled reports whether a has no failures left, and for how long.
func (l *authLimiter) throttled(a netip.Addr) (time.Duration, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	lim := l.clients[a]
	if lim == nil {
		return 0, false
	}
	now := l.now()
	if tokens := lim.TokensAt(now); tokens < 1 {
		return time.Duration((1 - tokens) * float64(authFailEvery)), true
	}
	return 0, false
}

// failed counts a refused credential from a; it reports whether that took
// a's last token (the moment to log, once).
func (l *authLimiter) failed(a netip.Addr) (last bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	lim := l.clients[a]
	if lim == nil {
		if len(l.clients) >= authFailClients {
			l.evictLocked(now)
		}
		lim = rate.NewLimiter(rate.Every(authFailEvery), authFailBurst)
		l.clients[a] = lim
	}
	lim.AllowN(now, 1)
	return lim.TokensAt(now) < 1
}

// evictLocked forgets idle clients (every token back), else any half.
func (l *authLimiter) evictLocked(now time.Time) {
	for a, lim := range l.clients {
		if lim.TokensAt(now) >= authFailBurst {
			delete(l.clients, a)
		}
	}
	for a := range l.clients {
		if len(l.clients) < authFailClients/2 {
			break
		}
		delete(l.clients, a)
	}
}

// refuseThrottled answers a throttled client 429 and reports whether it
// did.
func (s *Server) refuseThrottled(w http.ResponseWriter, r *http.Request) bool {
	wait, ok := s.authFails.throttled(clientAddr(r))
	if !ok {
		return false
	}
	s.mAuthThrottled.Inc()
	w.Header().Set("Retry-After", strconv.Itoa(int(wait.Seconds())+1))
	writeError(w, http.StatusTooManyRequests, errAuthThrottled)
	return true
}

// authFailed counts a refused credential, logging the refusal only until
// the client is throttled.
func (s *Server) authFailed(r *http.Request, what string, err error) {
	if s.authFails.failed(clientAddr(r)) {
		s.log.Warn("control: admin authentication throttled: too many refused credentials", "remote", r.RemoteAddr,
			"for", authFailEvery.String()+" per further attempt")
		return
	}
	s.log.Warn("control: "+what+" refused", "remote", r.RemoteAddr, "err", err)
}
