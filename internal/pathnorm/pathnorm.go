// Package pathnorm normalises HTTP request paths the way Istio does before
// it routes and authorizes a request (MeshConfig.pathNormalization, which
// sets Envoy's normalize_path, merge_slashes and
// path_with_escaped_slashes_action). The agent normalises each request
// once, where it enters, and then routes, authorizes and forwards that one
// path: a policy that matches "/public/*" can then not be walked around
// with "/public/../admin", "/public/%2e%2e/admin" or an absolute-form
// target, since what the policy saw is exactly what the workload gets.
//
// It is pure (no I/O) so that its semantics can be table-tested and
// fuzzed on their own.
package pathnorm

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Mode is a normalisation option. The zero value is Base, Istio's default.
type Mode uint8

const (
	// Base (Istio BASE, the default) follows RFC 3986: percent-encoded
	// unreserved characters (ALPHA DIGIT - . _ ~) are decoded, the hex
	// digits of other escapes upper-cased, '\' becomes '/', "." and ".."
	// segments are removed (".." above the root stays at the root), and
	// characters that must not appear raw in a path are percent-encoded.
	// Escaped slashes (%2F, %5C) stay as they are: they are data, not
	// separators, so "/public/..%2Fadmin" is one segment below /public.
	// Backends that decode %2F to '/' before they route need
	// DecodeAndMergeSlashes (CVE-2021-31920).
	Base Mode = iota
	// None changes nothing but what must be percent-encoded; %00, bad
	// escapes and control characters are refused even so.
	None
	// MergeSlashes is Base, then runs of '/' become one ("//admin" is
	// "/admin").
	MergeSlashes
	// DecodeAndMergeSlashes first decodes %2F and %5C (to '/'), then is
	// MergeSlashes: the strictest option, and the one a DENY rule on a
	// path needs if the backend decodes escaped slashes.
	DecodeAndMergeSlashes
)

var names = [...]string{Base: "BASE", None: "NONE", MergeSlashes: "MERGE_SLASHES", DecodeAndMergeSlashes: "DECODE_AND_MERGE_SLASHES"}

// String returns Istio's name of the option.
func (m Mode) String() string {
	if int(m) < len(names) {
		return names[m]
	}
	return fmt.Sprintf("Mode(%d)", m)
}

// ParseMode parses Istio's name of an option (case-insensitive); ""
// is Base, the default.
func ParseMode(s string) (Mode, error) {
	if s == "" {
		return Base, nil
	}
	for i, n := range names {
		if strings.EqualFold(s, n) {
			return Mode(i), nil
		}
	}
	return Base, fmt.Errorf("pathNormalization: %q is not one of NONE, BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES", s)
}

// MarshalText writes Istio's name.
func (m Mode) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// UnmarshalText reads Istio's name.
func (m *Mode) UnmarshalText(b []byte) error {
	v, err := ParseMode(string(b))
	if err != nil {
		return err
	}
	*m = v
	return nil
}

// UnmarshalJSON takes the name as a string ("MERGE_SLASHES") or in the
// form of Istio's MeshConfig ({"normalization": "MERGE_SLASHES"}), so that
// a mesh config's pathNormalization block can be copied as it is.
func (m *Mode) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		return m.UnmarshalText([]byte(s))
	}
	var istio struct {
		Normalization string `json:"normalization"`
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&istio); err != nil {
		return fmt.Errorf("pathNormalization: want a name or {normalization: NAME}: %w", err)
	}
	return m.UnmarshalText([]byte(istio.Normalization))
}

// Errors of Normalize and SplitTarget. Each is answered 400 Bad Request.
var (
	ErrInvalidEscape = errors.New("invalid percent-encoding in path")
	ErrNUL           = errors.New("%00 in path")
	ErrControl       = errors.New("control character in path")
	ErrTarget        = errors.New("request target is not a path or an absolute URI")
)

// SplitTarget splits an HTTP request target (RFC 9112 §3.2) into its
// path and the rest (the query with its '?', or ""). The origin form
// ("/a?b") and the absolute form ("http://host/a?b", whose authority is
// dropped: the Host is the request's) are accepted; the asterisk form
// ("*") is returned as the path. An absolute URI without a path has "/".
func SplitTarget(target string) (path, rest string, err error) {
	switch {
	case target == "*":
		return "*", "", nil
	case strings.HasPrefix(target, "/"):
	default:
		i := strings.Index(target, "://")
		if i <= 0 || !validScheme(target[:i]) {
			return "", "", ErrTarget
		}
		target = target[i+3:]
		j := strings.IndexAny(target, "/?")
		if j < 0 {
			return "/", "", nil
		}
		target = target[j:]
		if target[0] == '?' {
			return "/", target, nil
		}
	}
	if q := strings.IndexByte(target, '?'); q >= 0 {
		return target[:q], target[q:], nil
	}
	return target, "", nil
}

func validScheme(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(isAlpha(c) || i > 0 && (isDigit(c) || c == '+' || c == '-' || c == '.')) {
			return false
		}
	}
	return true
}

// Normalize returns the normalised form of path, a request path as sent
// (percent-encoded, without the query), or an error for what cannot be
// normalised: a bad or %00 escape, a control character. The result starts
// with '/', holds only characters that may appear raw in a path (others
// percent-encoded) and is a fixed point: Normalize(Normalize(p)) is
// Normalize(p), for every mode, also for a weaker mode than the one that
// made it. "" is "/".
func Normalize(path string, m Mode) (string, error) {
	if path == "" {
		return "/", nil
	}
	if clean(path, m) {
		return path, nil // the common case: no allocation
	}
	b := make([]byte, 1, len(path)+8)
	b[0] = '/' // dropped below if the path brings its own
	for i := 0; i < len(path); i++ {
		c := path[i]
		switch {
		case c == '%':
			if i+2 >= len(path) || !isHex(path[i+1]) || !isHex(path[i+2]) {
				return "", ErrInvalidEscape
			}
			v := unhex(path[i+1])<<4 | unhex(path[i+2])
			i += 2
			switch {
			case v == 0:
				return "", ErrNUL
			case m != None && isUnreserved(v):
				b = append(b, v)
			case m == DecodeAndMergeSlashes && (v == '/' || v == '\\'):
				b = append(b, '/')
			case m == None:
				b = append(b, '%', path[i-1], path[i]) // as sent
			default:
				b = appendEscape(b, v)
			}
		case c < 0x20 || c == 0x7f:
			return "", ErrControl
		case c == '\\' && m != None:
			b = append(b, '/')
		case isPathChar(c):
			b = append(b, c)
		default:
			b = appendEscape(b, c)
		}
	}
	if len(b) > 1 && b[1] == '/' {
		b = b[1:]
	}
	if m == None {
		return string(b), nil
	}
	b = removeDotSegments(b)
	if m == MergeSlashes || m == DecodeAndMergeSlashes {
		b = mergeSlashes(b)
	}
	return string(b), nil
}

// clean reports whether path is already normal: starts with '/', holds
// only raw path characters, no escape (none is decoded then, and its hex
// case is never in doubt), and for the modes other than None no
// backslash, no dot segment and, when merging, no "//".
func clean(path string, m Mode) bool {
	if path[0] != '/' {
		return false
	}
	for i := 0; i < len(path); i++ {
		c := path[i]
		if !isPathChar(c) {
			return false // '%', '\', what must be encoded, controls
		}
		if m == None || c != '/' {
			continue
		}
		if i+1 < len(path) && path[i+1] == '/' && (m == MergeSlashes || m == DecodeAndMergeSlashes) {
			return false
		}
		if dotSegmentAt(path, i+1) {
			return false
		}
	}
	return true
}

// dotSegmentAt reports whether the segment starting at p[i] is "." or "..".
func dotSegmentAt(p string, i int) bool {
	end := func(j int) bool { return j == len(p) || p[j] == '/' }
	return i < len(p) && p[i] == '.' && (end(i+1) || p[i+1] == '.' && end(i+2))
}

// removeDotSegments is RFC 3986 §5.2.4 on a path that starts with '/'
// (only '/' separates segments). A ".." at the root stays at the root,
// as browsers, Envoy and the RFC have it.
func removeDotSegments(p []byte) []byte {
	out := make([]byte, 0, len(p))
	// Each iteration consumes one segment: p[i] is '/', the segment
	// runs to the next '/' or the end.
	for i := 0; i < len(p); {
		j := i + 1
		for j < len(p) && p[j] != '/' {
			j++
		}
		seg := p[i+1 : j]
		last := j == len(p)
		switch string(seg) {
		case ".":
			if last {
				out = append(out, '/')
			}
		case "..":
			if k := lastSlash(out); k >= 0 {
				out = out[:k]
			}
			if last {
				out = append(out, '/')
			}
		default:
			out = append(out, '/')
			out = append(out, seg...)
		}
		i = j
	}
	if len(out) == 0 {
		out = append(out, '/')
	}
	return out
}

func lastSlash(b []byte) int {
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] == '/' {
			return i
		}
	}
	return -1
}

func mergeSlashes(b []byte) []byte {
	out := b[:0]
	for i, c := range b {
		if c == '/' && i > 0 && b[i-1] == '/' {
			continue
		}
		out = append(out, c)
	}
	return out
}

const hexDigits = "0123456789ABCDEF"

func appendEscape(b []byte, c byte) []byte {
	return append(b, '%', hexDigits[c>>4], hexDigits[c&15])
}

func isAlpha(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }
func isDigit(c byte) bool { return '0' <= c && c <= '9' }
func isHex(c byte) bool   { return isDigit(c) || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F' }

func unhex(c byte) byte {
	switch {
	case isDigit(c):
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

// isUnreserved: RFC 3986 §2.3.
func isUnreserved(c byte) bool {
	return isAlpha(c) || isDigit(c) || c == '-' || c == '.' || c == '_' || c == '~'
}

// isPathChar reports whether c may appear raw in a normalised path: pchar
// of RFC 3986 §3.3 (unreserved, sub-delims, ':', '@') and '/'. Exactly
// these survive net/url's EscapedPath unchanged, so the path forwarded is
// the path matched.
func isPathChar(c byte) bool {
	if isUnreserved(c) {
		return true
	}
	switch c {
	case '/', ':', '@', '!', '$', '&', '\'', '(', ')', '*', '+', ',', ';', '=':
		return true
	}
	return false
}
