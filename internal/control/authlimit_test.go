package control

import (
	"context"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestAdminAuthThrottled: refused admin credentials from one address are
// bounded: after authFailBurst refusals every credential it offers gets
// 429 with Retry-After (the right token too, else guessing would go on),
// on the API, the UI login and the UI cookie alike; another address and
// an admin certificate are not held up, and one refusal's worth of time
// later the address may try again.
func TestAdminAuthThrottled(t *testing.T) {
	s := startSecure(t)
	var mu sync.Mutex
	now := time.Now()
	s.authFails.mu.Lock()
	s.authFails.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	s.authFails.mu.Unlock()
	tok, err := os.ReadFile(filepath.Join(s.cfg.StateDir, AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	admin := strings.TrimSpace(string(tok))
	from := func(local string) *http.Client {
		c := adminHTTP(t, s)
		tr := c.Transport.(*http.Transport)
		d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
		tr.DialContext = func(ctx context.Context, n, a string) (net.Conn, error) { return d.DialContext(ctx, n, a) }
		c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
		return c
	}
	attacker, other := from("127.0.0.1"), from("127.65.0.2")
	for i := range authFailBurst {
		if code, b := adminGet(t, attacker, s, "/v1/nodes", "wrong-"+strings.Repeat("x", i)); code != http.StatusUnauthorized {
			t.Fatalf("refusal %d: %d %s, want 401", i+1, code, b)
		}
	}
	req, _ := http.NewRequest(http.MethodGet, "https://"+s.AdminAddr()+"/v1/nodes", nil)
	req.Header.Set("Authorization", "Bearer "+admin)
	resp, err := attacker.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("the right token after %d refusals: %d (Retry-After %q), want 429 with Retry-After", authFailBurst, resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	resp, err = attacker.PostForm("https://"+s.AdminAddr()+"/ui/login", url.Values{"token": {admin}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("UI login of a throttled address: %d, want 429", resp.StatusCode)
	}
	req, _ = http.NewRequest(http.MethodGet, "https://"+s.AdminAddr()+"/ui", nil)
	req.AddCookie(&http.Cookie{Name: uiCookie, Value: admin})
	if resp, err = attacker.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("UI cookie of a throttled address: %d, want 429", resp.StatusCode)
	}
	if code, b := adminGet(t, other, s, "/v1/nodes", admin); code != http.StatusOK {
		t.Fatalf("another address with the right token: %d %s", code, b)
	}
	if resp, err := adminCertHTTP(t, s).Get("https://" + s.AdminAddr() + "/v1/nodes"); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("an admin certificate from the throttled address: %v %v", resp, err)
	}
	if n := s.mAuthThrottled.Get(); n != 3 {
		t.Errorf("fogmesh_control_admin_auth_throttled_total %d, want 3", n)
	}
	mu.Lock()
	now = now.Add(authFailEvery)
	mu.Unlock()
	if code, b := adminGet(t, attacker, s, "/v1/nodes", admin); code != http.StatusOK {
		t.Fatalf("the right token %s later: %d %s", authFailEvery, code, b)
	}
}

// TestAuthLimiterBounded: addresses past authFailClients evict idle ones
// first, then others, so spoofed or many sources cannot grow the map.
func TestAuthLimiterBounded(t *testing.T) {
	l := newAuthLimiter()
	now := time.Now()
	l.now = func() time.Time { return now }
	busy := clientAddr(&http.Request{RemoteAddr: "[2001:db8::1]:1"})
	for range authFailBurst {
		l.failed(busy)
	}
	for i := range 3 * authFailClients {
		l.failed(clientAddr(&http.Request{RemoteAddr: net.JoinHostPort(net.IPv4(10, byte(i>>16), byte(i>>8), byte(i)).String(), "1")}))
		if len(l.clients) > authFailClients {
			t.Fatalf("%d addresses tracked, more than %d", len(l.clients), authFailClients)
		}
	}
	if got := clientAddr(&http.Request{RemoteAddr: "[2001:db8::2]:9"}); got != busy {
		t.Errorf("two addresses of one /64 count apart: %v, %v", got, busy)
	}
}
