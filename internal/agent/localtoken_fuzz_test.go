package agent

import (
	"bytes"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/net/http/httpguts"
)

// tokenAgent is an agent with only what initLocalToken and
// localAuthorized use, its state in dir.
func tokenAgent(dir string) *Agent {
	a := &Agent{log: slog.New(slog.DiscardHandler)}
	a.cfg.StateDir = dir
	return a
}

// TestLocalTokenFileDamagedReplaced: a token file holding a control
// character (a damaged file) is replaced by a new token, logged. Before,
// it was taken as the token: no client could send it in a header, so
// registering a workload through the local API was refused from then on.
func TestLocalTokenFileDamagedReplaced(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, LocalTokenFile)
	os.WriteFile(path, []byte("fml1.0123456789abcdef\x000123456789abcdef01234567\n"), 0o600)
	a := tokenAgent(dir)
	if err := a.initLocalToken(); err != nil {
		t.Fatal(err)
	}
	if bytes.ContainsRune([]byte(a.localToken), 0) || !httpguts.ValidHeaderFieldValue("Bearer "+a.localToken) {
		t.Fatalf("token %q kept", a.localToken)
	}
	// A good token is kept as it is.
	os.WriteFile(path, []byte("  my own token of at least thirty-two bytes \n"), 0o600)
	if err := a.initLocalToken(); err != nil || a.localToken != "my own token of at least thirty-two bytes" {
		t.Fatalf("token %q, %v", a.localToken, err)
	}
}

// FuzzLocalTokenFile: whatever the local API token file holds, the agent
// starts with a token a client can send (Authorization: Bearer) and the
// local API then accepts; the file's own token when it is one (32 bytes
// or more, trimmed); and the next start keeps the same token.
func FuzzLocalTokenFile(f *testing.F) {
	f.Add([]byte("fml1.0123456789abcdef0123456789abcdef0123456789abcdef\n"))
	f.Add([]byte("fml1.0123456789abcdef\x000123456789abcdef01234567\n"))
	f.Add([]byte("short\n"))
	f.Add([]byte("  0123456789 0123456789\t0123456789 \r\n"))
	f.Add([]byte("\xff\xfe0123456789abcdef0123456789abcdef"))
	f.Add([]byte{})
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, b []byte) {
		path := filepath.Join(dir, LocalTokenFile)
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		a := tokenAgent(dir)
		if err := a.initLocalToken(); err != nil {
			t.Fatal(err)
		}
		tok := a.localToken
		if len(tok) < 32 || !httpguts.ValidHeaderFieldValue("Bearer "+tok) || string(bytes.TrimSpace([]byte(tok))) != tok {
			t.Fatalf("file %q: token %q", b, tok)
		}
		if own := bytes.TrimSpace(b); len(own) >= 32 && httpguts.ValidHeaderFieldValue("Bearer "+string(own)) && tok != string(own) {
			t.Fatalf("file %q: its token replaced by %q", b, tok)
		}
		r := httptest.NewRequest(http.MethodPost, "/v1/workloads", nil)
		r.Header.Set("Authorization", "Bearer "+tok)
		if !a.localAuthorized(httptest.NewRecorder(), r) {
			t.Fatalf("file %q: token %q refused", b, tok)
		}
		again := tokenAgent(dir)
		if err := again.initLocalToken(); err != nil || again.localToken != tok {
			t.Fatalf("file %q: token %q, after a restart %q (%v)", b, tok, again.localToken, err)
		}
	})
}
