package control

import (
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAdminAuthTokenStoreDown: with the store closed under the server (a
// real failure: every read of it fails), a token cannot be checked. The
// Bearer header, the UI cookie and the UI login then answer 503, not a
// refusal: none counts toward the throttle (11 of them, more than
// authFailBurst, and a full burst of wrong tokens is still refused with
// 401 before the 429), the cookie is kept (the token may be right) and
// the login sets none.
func TestAdminAuthTokenStoreDown(t *testing.T) {
	s := startSecure(t)
	tok, err := os.ReadFile(filepath.Join(s.cfg.StateDir, AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	admin := strings.TrimSpace(string(tok))
	c := adminHTTP(t, s)
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	if code, b := adminGet(t, c, s, "/v1/nodes", admin); code != http.StatusOK {
		t.Fatalf("the admin token with the store up: %d %s", code, b)
	}
	if err := s.st.Close(); err != nil {
		t.Fatal(err)
	}

	do := func(req *http.Request) (*http.Response, string) {
		t.Helper()
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	const tries = authFailBurst + 1
	for i := range tries {
		var req *http.Request
		what := "Bearer"
		switch i % 3 {
		case 0:
			req, _ = http.NewRequest(http.MethodGet, "https://"+s.AdminAddr()+"/v1/nodes", nil)
			req.Header.Set("Authorization", "Bearer "+admin)
		case 1:
			what = "UI cookie"
			req, _ = http.NewRequest(http.MethodGet, "https://"+s.AdminAddr()+"/ui", nil)
			req.AddCookie(&http.Cookie{Name: uiCookie, Value: admin})
		case 2:
			what = "UI login"
			req, _ = http.NewRequest(http.MethodPost, "https://"+s.AdminAddr()+"/ui/login",
				strings.NewReader(url.Values{"token": {admin}}.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
		resp, body := do(req)
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("%s %d with the store closed: %d %s, want 503", what, i+1, resp.StatusCode, body)
		}
		for _, ck := range resp.Cookies() {
			if ck.Name == uiCookie {
				t.Fatalf("%s %d with the store closed set the UI cookie %+v: kept as it was, none set", what, i+1, ck)
			}
		}
	}
	if _, throttled := s.authFails.throttled(clientAddr(&http.Request{RemoteAddr: "127.0.0.1:1"})); throttled {
		t.Fatal("throttled after the store's failures")
	}
	if n := s.mAuthThrottled.Get(); n != 0 {
		t.Fatalf("fogmesh_control_admin_auth_throttled_total %d, want 0", n)
	}
	// A wrong token (not a token at all: refused before the store) is
	// counted as before: a full burst of 401s, then 429.
	for i := range authFailBurst {
		if code, b := adminGet(t, c, s, "/v1/nodes", "wrong-"+strings.Repeat("x", i)); code != http.StatusUnauthorized {
			t.Fatalf("wrong token %d after the store's failures: %d %s, want 401 (they were counted)", i+1, code, b)
		}
	}
	if code, b := adminGet(t, c, s, "/v1/nodes", "wrong-again"); code != http.StatusTooManyRequests {
		t.Fatalf("wrong token past the burst: %d %s, want 429", code, b)
	}
}
