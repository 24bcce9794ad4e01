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

	"github.com/fogmesh/fogmesh/internal/clientip"
)

// Failed admin authentication is throttled per client address: each
// refused token (a Bearer header, a UI login, a UI cookie) takes one of
// authFailBurst tokens, which come back one per authFailEvery. A client
// with none left gets 429 for every wrong credential, without a line
// logged, until one comes back: the warning each refusal wrote is
// bounded. The right token is still served (a shared address, behind a
// NAT or a proxy, must not lock its admins out; a token has 128 random
// bits, which no rate of guessing finds), and an admin certificate,
// checked in the TLS handshake, is never counted.
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
// /64: one host has many; clientip.Key).
func clientAddr(r *http.Request) netip.Addr {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}
	}
	return clientip.Key(a)
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

// errTokenStore marks a token that could not be checked for a store
// error: no refused credential, not counted.
var errTokenStore = errors.New("token store")

// throttle reports whether a credential refused with err comes from a
// throttled address, setting Retry-After and counting it if so: the
// caller answers 429 and logs nothing.
func (s *Server) throttle(w http.ResponseWriter, r *http.Request, err error) bool {
	if errors.Is(err, errTokenStore) {
		return false
	}
	wait, ok := s.authFails.throttled(clientAddr(r))
	if !ok {
		return false
	}
	s.mAuthThrottled.Inc()
	w.Header().Set("Retry-After", strconv.Itoa(int(wait.Seconds())+1))
	return true
}

// refusedCredential handles a credential refused with err: from a
// throttled address it answers 429 and reports true; else it counts and
// logs the refusal (authFailed) and the caller answers.
func (s *Server) refusedCredential(w http.ResponseWriter, r *http.Request, what string, err error) bool {
	if s.throttle(w, r, err) {
		writeError(w, http.StatusTooManyRequests, errAuthThrottled)
		return true
	}
	s.authFailed(r, what, err)
	return false
}

// authFailed counts a refused credential (not a store error), logging the
// refusal only until the client is throttled.
func (s *Server) authFailed(r *http.Request, what string, err error) {
	if !errors.Is(err, errTokenStore) && s.authFails.failed(clientAddr(r)) {
		s.log.Warn("control: admin authentication throttled: too many refused credentials", "remote", r.RemoteAddr,
			"for", authFailEvery.String()+" per further attempt")
		return
	}
	s.log.Warn("control: "+what+" refused", "remote", r.RemoteAddr, "err", err)
}
