package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestCheckPrintsAnswersTermSafe: text of the control plane's answer in a
// check's detail (here /healthz's and /v1/status's bodies, with escape
// sequences that clear the screen and set the window title) prints
// quoted, as fogmesh get and stat print it, never as raw escapes.
func TestCheckPrintsAnswersTermSafe(t *testing.T) {
	const evil = "degraded\x1b[2J\x1b]0;pwned\x07\nfake line"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, evil, http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	results := runChecks(context.Background(), checkOpts{server: srv.URL})
	var b bytes.Buffer
	printChecks(&b, results)
	out := b.String()
	if strings.ContainsAny(out, "\x1b\x07") {
		t.Fatalf("raw escape printed:\n%q", out)
	}
	if strings.Contains(out, "\nfake line") {
		t.Errorf("a newline of the answer printed as a line:\n%s", out)
	}
	if !strings.Contains(out, `degraded\x1b[2J\x1b]0;pwned\a\nfake line`) {
		t.Errorf("the answer is not printed quoted:\n%s", out)
	}
	// Plain text prints as is.
	b.Reset()
	printChecks(&b, []checkResult{checkFail("agents connected", "1 of 2 nodes down: shop-1-a", "see its log")})
	if want := "✖ agents connected: 1 of 2 nodes down: shop-1-a\n    hint: see its log\n"; !strings.HasPrefix(b.String(), want) {
		t.Errorf("plain result printed as %q, want %q", b.String(), want)
	}
}
