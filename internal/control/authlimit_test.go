package control

import (
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
// bounded: after authFailBurst refusals every wrong credential it offers
// gets 429 with Retry-After and no log line, on the API, the UI login and
// the UI cookie alike (which is cleared), while the right token is still
// served (a shared address must not lock its admins out); one refusal's
// worth of time later a wrong token is refused with 401 again.
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
	c := adminHTTP(t, s)
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	for i := range authFailBurst {
		if code, b := adminGet(t, c, s, "/v1/nodes", "wrong-"+strings.Repeat("x", i)); code != http.StatusUnauthorized {
			t.Fatalf("refusal %d: %d %s, want 401", i+1, code, b)
		}
	}
	req, _ := http.NewRequest(http.MethodGet, "https://"+s.AdminAddr()+"/v1/nodes", nil)
	req.Header.Set("Authorization", "Bearer wrong-again")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("a wrong token after %d refusals: %d (Retry-After %q), want 429 with Retry-After", authFailBurst, resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if code, b := adminGet(t, c, s, "/v1/nodes", admin); code != http.StatusOK {
		t.Fatalf("the right token from the throttled address: %d %s, want 200", code, b)
	}
	login := func(token string) int {
		resp, err := c.PostForm("https://"+s.AdminAddr()+"/ui/login", url.Values{"token": {token}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := login("wrong"); code != http.StatusTooManyRequests {
		t.Fatalf("a wrong UI login from the throttled address: %d, want 429", code)
	}
	if code := login(admin); code != http.StatusSeeOther {
		t.Fatalf("the right UI login from the throttled address: %d, want 303", code)
	}
	req, _ = http.NewRequest(http.MethodGet, "https://"+s.AdminAddr()+"/ui", nil)
	req.AddCookie(&http.Cookie{Name: uiCookie, Value: "wrong"})
	if resp, err = c.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	cleared := false
	for _, ck := range resp.Cookies() {
		cleared = cleared || ck.Name == uiCookie && ck.MaxAge < 0
	}
	if resp.StatusCode != http.StatusTooManyRequests || !cleared {
		t.Fatalf("a wrong UI cookie from the throttled address: %d (cleared %v), want 429 and the cookie cleared", resp.StatusCode, cleared)
	}
	if n := s.mAuthThrottled.Get(); n != 3 {
		t.Errorf("fogmesh_control_admin_auth_throttled_total %d, want 3", n)
	}
	mu.Lock()
	now = now.Add(authFailEvery)
	mu.Unlock()
	if code, b := adminGet(t, c, s, "/v1/nodes", "wrong-later"); code != http.StatusUnauthorized {
		t.Fatalf("a wrong token %s later: %d %s, want 401", authFailEvery, code, b)
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
