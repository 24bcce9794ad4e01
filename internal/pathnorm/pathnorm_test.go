package pathnorm

import (
	"encoding/json"
	"errors"
	"net/url"
	"strings"
	"testing"
)

// The cases of issue 9 (finding 3), Istio's normalization reference page
// and RFC 3986 §5.4 (dot segments of the path).
func TestNormalize(t *testing.T) {
	const B, N, M, D = Base, None, MergeSlashes, DecodeAndMergeSlashes
	cases := []struct {
		in   string
		mode Mode
		want string
		err  error
	}{
		{"/public/a.txt", B, "/public/a.txt", nil},
		{"", B, "/", nil},
		{"/", B, "/", nil},
		// Dot segments, raw and encoded (issue 9).
		{"/public/../admin/secret.txt", B, "/admin/secret.txt", nil},
		{"/public/%2e%2e/admin/secret.txt", B, "/admin/secret.txt", nil},
		{"/public/%2E./admin/secret.txt", B, "/admin/secret.txt", nil},
		{"/./admin/x", B, "/admin/x", nil},
		{"/public/./data/abc/../xyz", B, "/public/data/xyz", nil}, // Istio's example
		{"/a/b/c/./../../g", B, "/a/g", nil},                      // RFC 3986 §5.2.4
		{"/mid/content=5/../6", B, "/mid/6", nil},                 // RFC 3986 §5.2.4
		{"/..", B, "/", nil},                                      // clamped at the root
		{"/../../admin", B, "/admin", nil},
		{"/a/..", B, "/", nil},
		{"/a/.", B, "/a/", nil},
		{"/a/./", B, "/a/", nil},
		{"/a//../b", B, "/a/b", nil}, // dots first, then (if at all) slashes: as Envoy
		{"/a//../b", M, "/a/b", nil},
		{"/a..b/.c/..d", B, "/a..b/.c/..d", nil}, // not dot segments
		// Escaped slashes are data in BASE and MERGE_SLASHES.
		{"/public/..%2fadmin/secret.txt", B, "/public/..%2Fadmin/secret.txt", nil},
		{"/public%2f..%2fadmin/secret.txt", B, "/public%2F..%2Fadmin/secret.txt", nil},
		{"/public/..%2fadmin/secret.txt", M, "/public/..%2Fadmin/secret.txt", nil},
		{"/public/..%2fadmin/secret.txt", D, "/admin/secret.txt", nil},
		{"/public%2f..%2fadmin/secret.txt", D, "/admin/secret.txt", nil},
		{"/public%5c..%5cadmin/secret.txt", D, "/admin/secret.txt", nil},
		{"/a%2fb", D, "/a/b", nil}, // Istio's example
		{"/some%2fdata/%61%62%63", D, "/some/data/abc", nil},
		// Slashes.
		{"//admin/x", B, "//admin/x", nil},
		{"//admin/x", M, "/admin/x", nil},
		{"/some//data///abc", M, "/some/data/abc", nil},
		{"/a%2f%2fb", D, "/a/b", nil},
		{"/a%2F/b", M, "/a%2F/b", nil},
		// Backslash (Istio BASE: "\da" is "/da").
		{`\da`, B, "/da", nil},
		{`/some\data`, B, "/some/data", nil},
		{`/public\..\admin`, B, "/admin", nil},
		{`/a\\b`, M, "/a/b", nil},
		{`/a%5cb`, B, "/a%5Cb", nil},
		// Unreserved characters are decoded, others keep (upper-cased) escapes.
		{"/%41%5a%61%7a%30%39%2d%2e%5f%7e", B, "/AZaz09-._~", nil},
		{"/a%20b%3f%25%23", B, "/a%20b%3F%25%23", nil},
		{"/a%252e%252e/x", B, "/a%252e%252e/x", nil}, // decoded once, never twice
		{"/%2e%2e%2f", B, "/..%2F", nil},
		// Raw characters that must be encoded are.
		{"/a b\"<>{}|^`", B, "/a%20b%22%3C%3E%7B%7D%7C%5E%60", nil},
		{"/caf\xc3\xa9", B, "/caf%C3%A9", nil},
		{"/a#b", B, "/a%23b", nil},
		{"/a!$&'()*+,;=:@b", B, "/a!$&'()*+,;=:@b", nil},
		// NONE: as sent, but valid.
		{"/public/../admin", N, "/public/../admin", nil},
		{"/a%2e%2E//b", N, "/a%2e%2E//b", nil},
		{`/a\b c`, N, "/a%5Cb%20c", nil},
		// Refused in every mode.
		{"/a%00b", B, "", ErrNUL},
		{"/a%00b", N, "", ErrNUL},
		{"/a%zzb", B, "", ErrInvalidEscape},
		{"/a%2", B, "", ErrInvalidEscape},
		{"/a%", D, "", ErrInvalidEscape},
		{"/a\x00b", B, "", ErrControl},
		{"/a\x7fb", M, "", ErrControl},
		{"/a\tb", N, "", ErrControl},
	}
	for _, c := range cases {
		got, err := Normalize(c.in, c.mode)
		if !errors.Is(err, c.err) || got != c.want {
			t.Errorf("Normalize(%q, %v) = %q, %v; want %q, %v", c.in, c.mode, got, err, c.want, c.err)
		}
	}
}

func TestSplitTarget(t *testing.T) {
	cases := []struct{ in, path, rest string }{
		{"/a/b?x=1", "/a/b", "?x=1"},
		{"/a/b", "/a/b", ""},
		{"/a?", "/a", "?"},
		{"*", "*", ""},
		{"http://x/public/../admin/secret.txt", "/public/../admin/secret.txt", ""},
		{"HTTP://x:80/p?q=/..", "/p", "?q=/.."},
		{"http://x", "/", ""},
		{"http://x?q", "/", "?q"},
		{"https://user@x/a", "/a", ""},
	}
	for _, c := range cases {
		p, r, err := SplitTarget(c.in)
		if err != nil || p != c.path || r != c.rest {
			t.Errorf("SplitTarget(%q) = %q, %q, %v; want %q, %q", c.in, p, r, err, c.path, c.rest)
		}
	}
	for _, bad := range []string{"", "a/b", "x.com:80", "://x/a", "1http://x/a", "ht tp://x/a"} {
		if _, _, err := SplitTarget(bad); !errors.Is(err, ErrTarget) {
			t.Errorf("SplitTarget(%q): %v, want ErrTarget", bad, err)
		}
	}
}

func TestParseMode(t *testing.T) {
	for s, want := range map[string]Mode{"": Base, "BASE": Base, "none": None, "MERGE_SLASHES": MergeSlashes,
		"DECODE_AND_MERGE_SLASHES": DecodeAndMergeSlashes} {
		if m, err := ParseMode(s); err != nil || m != want {
			t.Errorf("ParseMode(%q) = %v, %v", s, m, err)
		}
	}
	if _, err := ParseMode("DECODE"); err == nil || !strings.Contains(err.Error(), "MERGE_SLASHES") {
		t.Errorf("ParseMode(DECODE): %v", err)
	}
	var cfg struct {
		A Mode `json:"a"`
		B Mode `json:"b"`
		C Mode `json:"c"`
	}
	// A name, or Istio's MeshConfig form.
	if err := json.Unmarshal([]byte(`{"a":"MERGE_SLASHES","b":{"normalization":"DECODE_AND_MERGE_SLASHES"}}`), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.A != MergeSlashes || cfg.B != DecodeAndMergeSlashes || cfg.C != Base {
		t.Fatalf("decoded %+v", cfg)
	}
	for _, bad := range []string{`{"a":"X"}`, `{"a":{"normalisation":"BASE"}}`, `{"a":3}`} {
		if err := json.Unmarshal([]byte(bad), &cfg); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
	if b, _ := json.Marshal(MergeSlashes); string(b) != `"MERGE_SLASHES"` {
		t.Errorf("marshal: %s", b)
	}
}

// TestNormalizeCleanNoAlloc: a path that is already normal costs no
// allocation (the HTTP/1.1 fast path normalises every request).
func TestNormalizeCleanNoAlloc(t *testing.T) {
	for _, m := range []Mode{Base, None, MergeSlashes, DecodeAndMergeSlashes} {
		if n := testing.AllocsPerRun(100, func() { Normalize("/api/v1/orders/42.json", m) }); n != 0 {
			t.Errorf("%v: %v allocations", m, n)
		}
	}
}

// FuzzNormalize checks the invariants for any input and mode: the result
// starts with '/', is a fixed point (also of every weaker mode), has only
// raw path characters and escapes net/url keeps as they are; outside NONE
// it has no dot segment and no backslash, when merging no "//"; and in
// BASE it addresses the same decoded resource as the input (the same
// sequence of decoded segments once dot segments are resolved), so
// normalising never changes what the workload serves, only how it is
// spelled.
func FuzzNormalize(f *testing.F) {
	for _, s := range []string{"/public/../admin/secret.txt", "/public/%2e%2e/admin/x", "/public/..%2fadmin/x",
		"/public%2f..%2fadmin/x", "//admin/x", "/./admin/x", `/a\..\b`, "/a%00", "/%zz", "/a//../b", "/%2E%2e",
		"/caf\xc3\xa9 x", "/a%252e", "/..%5c..%5c", "/a/./b/../../..", "*", "/a#b"} {
		for m := range 4 {
			f.Add(s, uint8(m))
		}
	}
	f.Fuzz(func(t *testing.T, in string, mb uint8) {
		if p, rest, err := SplitTarget(in); err == nil {
			if p != "*" && !strings.HasPrefix(p, "/") || strings.Contains(p, "?") || rest != "" && rest[0] != '?' ||
				!strings.HasSuffix(in, p+rest) {
				t.Fatalf("SplitTarget(%q) = %q, %q", in, p, rest)
			}
		}
		m := Mode(mb % 4)
		out, err := Normalize(in, m)
		if err != nil {
			if !refused(in) {
				t.Fatalf("Normalize(%q, %v): %v, but nothing in it is refused", in, m, err)
			}
			return
		}
		if refused(in) {
			t.Fatalf("Normalize(%q, %v) = %q, want an error", in, m, out)
		}
		if !strings.HasPrefix(out, "/") {
			t.Fatalf("Normalize(%q, %v) = %q: no leading '/'", in, m, out)
		}
		for _, w := range weakerOrEqual(m) {
			if again, err := Normalize(out, w); err != nil || again != out {
				t.Fatalf("Normalize(%q, %v) = %q, then %v gives %q, %v: not a fixed point", in, m, out, w, again, err)
			}
		}
		u := &url.URL{Path: mustUnescape(t, out), RawPath: out}
		if u.EscapedPath() != out {
			t.Fatalf("Normalize(%q, %v) = %q, but net/url would send %q", in, m, out, u.EscapedPath())
		}
		if m == None {
			return
		}
		segs := strings.Split(out[1:], "/")
		for _, s := range segs {
			if s == "." || s == ".." {
				t.Fatalf("Normalize(%q, %v) = %q: dot segment", in, m, out)
			}
		}
		if strings.Contains(out, `\`) {
			t.Fatalf("Normalize(%q, %v) = %q: backslash", in, m, out)
		}
		if m != Base && strings.Contains(out, "//") {
			t.Fatalf("Normalize(%q, %v) = %q: not merged", in, m, out)
		}
		if m == Base {
			want := resolve(decodedSegments(t, in, true))
			got := decodedSegments(t, out, false)
			if strings.Join(got, "\x00") != strings.Join(want, "\x00") {
				t.Fatalf("Normalize(%q) = %q addresses %q, want %q", in, out, got, want)
			}
		}
	})
}

// refused reports what Normalize must refuse: a '%' without two hex
// digits, %00, a control character.
func refused(s string) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c < 0x20 || c == 0x7f:
			return true
		case c == '%':
			if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) || s[i+1] == '0' && s[i+2] == '0' {
				return true
			}
			i += 2
		}
	}
	return false
}

func weakerOrEqual(m Mode) []Mode {
	switch m {
	case DecodeAndMergeSlashes:
		return []Mode{None, Base, MergeSlashes, DecodeAndMergeSlashes}
	case MergeSlashes:
		return []Mode{None, Base, MergeSlashes}
	case Base:
		return []Mode{None, Base}
	}
	return []Mode{None}
}

func mustUnescape(t *testing.T, s string) string {
	u, err := url.PathUnescape(s)
	if err != nil {
		t.Fatalf("%q: %v", s, err)
	}
	return u
}

// decodedSegments splits a path into segments (at '/', and for raw input
// also at '\', which BASE treats as '/') and percent-decodes each.
func decodedSegments(t *testing.T, p string, raw bool) []string {
	if raw {
		p = strings.ReplaceAll(p, `\`, "/")
	}
	p = strings.TrimPrefix(p, "/")
	var out []string
	for _, s := range strings.Split(p, "/") {
		out = append(out, mustUnescape(t, s))
	}
	return out
}

// resolve removes "." and ".." segments (decoded: %2e counts), as a
// stack: the reference the implementation's RFC 3986 loop is held to.
func resolve(segs []string) []string {
	var out []string
	for i, s := range segs {
		last := i == len(segs)-1
		switch s {
		case ".":
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
		default:
			out = append(out, s)
			continue
		}
		if last {
			out = append(out, "")
		}
	}
	if len(out) == 0 {
		out = []string{""}
	}
	return out
}
