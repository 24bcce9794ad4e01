package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"unicode"
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

// TestCheckJSONEscapesC1: -o json prints a C1 control character of a
// check's text (U+009B is CSI, which terminals take as ESC [) as a \u
// escape, as it prints every C0 one, so the terminal never receives it
// raw; the JSON decodes back to the same text. Before, encoding/json left
// U+0080-U+009F as they were.
func TestCheckJSONEscapesC1(t *testing.T) {
	detail := "degraded\u009b2J\u0085next\u007f and café ✔"
	var b bytes.Buffer
	if err := printChecksJSON(&b, []checkResult{checkFail("control plane", detail, "hint\u009b")}); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, r := range out {
		if r >= 0x7f && r <= 0x9f {
			t.Fatalf("raw U+%04X printed:\n%q", r, out)
		}
	}
	if !strings.Contains(out, `\u009b2J\u0085next\u007f`) {
		t.Errorf("not escaped as \\u00XX:\n%s", out)
	}
	var back struct {
		OK     bool          `json:"ok"`
		Checks []checkResult `json:"checks"`
	}
	if err := json.Unmarshal(b.Bytes(), &back); err != nil || back.OK || len(back.Checks) != 1 ||
		back.Checks[0].Detail != detail || back.Checks[0].Hint != "hint\u009b" {
		t.Errorf("JSON %s decodes as %+v (%v)", out, back, err)
	}
}

// TestJSONTermSafeSameValue: jsonTermSafe's JSON decodes to the value
// encoding/json wrote, for text with C1, bidirectional overrides, private
// use and non-BMP characters, and holds none of them raw.
func TestJSONTermSafeSameValue(t *testing.T) {
	for _, s := range []string{"plain", "csi\u009b2J", "del\x7f", "rlo\u202etxt.exe", "pua\ue000\U000F0000", "emoji\U0001F600",
		"tag\U000E0041", `back\slash\u009b`, "nel\u0085", "bom\ufeff", "zw\u200b\u2028"} {
		b, err := json.Marshal(map[string]string{"k": s})
		if err != nil {
			t.Fatal(err)
		}
		safe := jsonTermSafe(b)
		var got map[string]string
		if err := json.Unmarshal(safe, &got); err != nil || got["k"] != s {
			t.Errorf("%q: %s decodes to %q (%v)", s, safe, got["k"], err)
		}
		for _, r := range string(safe) {
			if !unicode.IsGraphic(r) {
				t.Errorf("%q: %s holds %U raw", s, safe, r)
			}
		}
	}
}

// TestJSONTermSafeRawBytes: a byte that is not UTF-8 in JSON a command
// passes on as it came (a json.RawMessage item) is written as \ufffd, not
// raw: a lone 0x9b would be CSI on a terminal.
func TestJSONTermSafeRawBytes(t *testing.T) {
	got := string(jsonTermSafe([]byte("{\"k\":\"a\x9b2Jb\"}")))
	if want := `{"k":"a\ufffd2Jb"}`; got != want {
		t.Errorf("jsonTermSafe = %q, want %q", got, want)
	}
}
