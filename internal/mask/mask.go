// Package mask masks personal data in HTTP requests before they leave an
// edge site: regulations (and common sense) keep identity numbers, phone
// numbers and card numbers of people served at the edge out of the cloud,
// while the services there still get the rest of the request.
//
// It is pure: no sockets, no clocks. A Masker is compiled once from a
// Config and is safe for concurrent use; it rewrites headers in place and
// wraps bodies in an io.Reader that streams (memory stays bounded whatever
// the body's size):
//
//   - JSON bodies (application/json, its other names such as text/json
//     and application/x-ndjson, and any +json type) go through a
//     streaming scanner that copies bytes through and keeps only the
//     current string or number token and the current path. String values
//     and object keys are decoded (\u0031 is a digit) before the detectors
//     run; a string with a match is re-encoded, any other passes byte for
//     byte. Numbers are judged by their exact value, whatever their
//     spelling (1.3812345678e10 is 13812345678; number.go), and by the
//     integer a float64 parser rounds them to; so are strings that hold a
//     number. Card or phone numbers become masked strings (→
//     "138****5678"): a masked number is no number. A leading UTF-8 byte
//     order mark is passed on.
//   - A body without Content-Type is JSON if it starts like JSON ('{' or
//     '[' after space or a BOM).
//   - Other content types listed in Config.ContentTypes are scanned as
//     text; everything else passes unchanged.
//   - A request that declares more than one Content-Type, or one that is
//     no media type, is refused: see Classify.
//
// See Config for the detectors, paths, and what happens to malformed,
// compressed and very long input.
package mask

import (
	"fmt"
	"github.com/fogmesh/fogmesh/internal/api"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Detector names.
const (
	DetectorCNID     = "cn-id"     // Chinese resident identity number
	DetectorCNMobile = "cn-mobile" // mainland mobile number
	DetectorBankCard = "bank-card" // payment card number
)

// Labels reported for matches that no detector found.
const (
	LabelJSONPath = "json-path" // a value masked by a JSONPath rule
	LabelHeader   = "header"    // a header masked or dropped by name
)

// Actions of path and header rules.
const (
	ActionMask   = "mask"   // replace the value, keeping KeepFirst/KeepLast characters
	ActionDrop   = "drop"   // remove the object member, array element or header
	ActionDetect = "detect" // headers only: run the detectors and regexes on the value
)

// Policies for input the Masker cannot inspect.
const (
	PolicyReject = "reject" // fail: the request is not sent on (the default)
	PolicyPass   = "pass"   // send it on unmasked
	PolicyDecode = "decode" // onCompressed only: decompress, mask, compress again
)

// Config says what to mask: the document format, spec.egress[].mask of a
// Service, defined in internal/api with the other resource types.
type Config = api.MaskConfig

// PathRule, RegexRule and HeaderRule are the parts of a Config.
type (
	PathRule   = api.MaskPathRule
	RegexRule  = api.MaskRegexRule
	HeaderRule = api.MaskHeaderRule
)

// ConfigError names the Config field that is wrong, relative to Config
// (e.g. "jsonPaths[1].path").
type ConfigError struct {
	Field  string
	Reason string
}

func (e *ConfigError) Error() string { return e.Field + ": " + e.Reason }

// MaskField names the field at fault for api.ValidateMask's callers.
func (e *ConfigError) MaskField() (field, reason string) { return e.Field, e.Reason }

func init() {
	api.ValidateMask = func(c api.MaskConfig) error {
		_, err := Compile(c)
		return err
	}
}

func cfgErr(field, format string, args ...any) error {
	return &ConfigError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

const (
	defaultMaxToken = 1 << 20
	minMaxToken     = 4096
	maxKeep         = 16
	// overlap is what consecutive windows of a long string share: more
	// than the longest detector match (a grouped 19-digit card with its
	// separators is 25 bytes).
	overlap = 256
)

// Masker is a compiled Config. It is safe for concurrent use.
type Masker struct {
	cfg                  Config
	id, mobile, card     bool
	regexes              []*regexp.Regexp
	regexNames           []string
	paths                []compiledPath
	maxPathLen           int
	headers              map[string]string // canonical name -> action
	keepFirst, keepLast  int
	maskChar             []byte
	types                []string
	rejectMalformed      bool
	rejectCompressed     bool
	decodeCompressed     bool
	rejectUpgrade        bool
	maxToken             int
	scanStrings, anyRule bool
}

// Compile checks cfg and returns its Masker. The error is a *ConfigError.
func Compile(cfg Config) (*Masker, error) {
	m := &Masker{cfg: cfg, headers: map[string]string{}, maskChar: []byte("*"), maxToken: defaultMaxToken,
		keepFirst: cfg.KeepFirst, keepLast: cfg.KeepLast, rejectMalformed: true, rejectCompressed: true, rejectUpgrade: true}
	seen := map[string]bool{}
	for i, d := range cfg.Detectors {
		f := fmt.Sprintf("detectors[%d]", i)
		switch d {
		case DetectorCNID:
			m.id = true
		case DetectorCNMobile:
			m.mobile = true
		case DetectorBankCard:
			m.card = true
		default:
			return nil, cfgErr(f, "%q is not one of cn-id, cn-mobile, bank-card", d)
		}
		if seen[d] {
			return nil, cfgErr(f, "duplicate detector %q", d)
		}
		seen[d] = true
	}
	for i, r := range cfg.Regexes {
		f := fmt.Sprintf("regexes[%d]", i)
		if r.Name == "" {
			return nil, cfgErr(f+".name", "required")
		}
		if strings.ContainsAny(r.Name, "\"\\\n") || len(r.Name) > 63 {
			return nil, cfgErr(f+".name", "%q: at most 63 characters, no quotes, backslashes or newlines", r.Name)
		}
		if r.Pattern == "" {
			return nil, cfgErr(f+".pattern", "required")
		}
		re, err := regexp.Compile(r.Pattern)
		if err != nil {
			return nil, cfgErr(f+".pattern", "%v", err)
		}
		if re.MatchString("") {
			return nil, cfgErr(f+".pattern", "%q matches the empty string", r.Pattern)
		}
		m.regexes = append(m.regexes, re)
		m.regexNames = append(m.regexNames, r.Name)
	}
	for i, p := range cfg.JSONPaths {
		f := fmt.Sprintf("jsonPaths[%d]", i)
		cp, err := parsePath(p.Path)
		if err != nil {
			return nil, cfgErr(f+".path", "%q: %v", p.Path, err)
		}
		switch p.Action {
		case "", ActionMask:
			cp.drop = false
		case ActionDrop:
			cp.drop = true
		default:
			return nil, cfgErr(f+".action", "%q is not mask or drop", p.Action)
		}
		m.paths = append(m.paths, cp)
		m.maxPathLen = max(m.maxPathLen, len(cp.segs))
	}
	for i, h := range cfg.Headers {
		f := fmt.Sprintf("headers[%d]", i)
		if !validHeaderName(h.Name) {
			return nil, cfgErr(f+".name", "%q is not a header name", h.Name)
		}
		a := h.Action
		switch a {
		case "":
			a = ActionMask
		case ActionMask, ActionDrop, ActionDetect:
		default:
			return nil, cfgErr(f+".action", "%q is not mask, drop or detect", h.Action)
		}
		m.headers[headerRuleKey(h.Name)] = a
	}
	if cfg.KeepFirst < 0 || cfg.KeepFirst > maxKeep {
		return nil, cfgErr("keepFirst", "%d is not within 0 and %d", cfg.KeepFirst, maxKeep)
	}
	if cfg.KeepLast < 0 || cfg.KeepLast > maxKeep {
		return nil, cfgErr("keepLast", "%d is not within 0 and %d", cfg.KeepLast, maxKeep)
	}
	if cfg.MaskChar != "" {
		r, n := utf8.DecodeRuneInString(cfg.MaskChar)
		if n != len(cfg.MaskChar) || r == utf8.RuneError || !unicode.IsGraphic(r) || unicode.IsSpace(r) ||
			unicode.IsDigit(r) || unicode.IsLetter(r) || r == '"' || r == '\\' || r == '-' || r == '+' {
			return nil, cfgErr("maskChar", "%q must be one printable character, not a digit, letter, space, quote, backslash, '-' or '+'", cfg.MaskChar)
		}
		m.maskChar = []byte(cfg.MaskChar)
	}
	m.types = cfg.ContentTypes
	if len(m.types) == 0 {
		m.types = []string{"application/json", "+json"}
	}
	for i, t := range m.types {
		if !validTypePattern(t) {
			return nil, cfgErr(fmt.Sprintf("contentTypes[%d]", i), "%q is not a media type, +suffix, type/* or *", t)
		}
	}
	switch cfg.OnMalformed {
	case "", PolicyReject:
	case PolicyPass:
		m.rejectMalformed = false
	default:
		return nil, cfgErr("onMalformed", "%q is not reject or pass", cfg.OnMalformed)
	}
	switch cfg.OnCompressed {
	case "", PolicyReject:
	case PolicyPass:
		m.rejectCompressed = false
	case PolicyDecode:
		m.decodeCompressed = true
	default:
		return nil, cfgErr("onCompressed", "%q is not reject, pass or decode", cfg.OnCompressed)
	}
	switch cfg.OnUpgrade {
	case "", PolicyReject:
	case PolicyPass:
		m.rejectUpgrade = false
	default:
		return nil, cfgErr("onUpgrade", "%q is not reject or pass", cfg.OnUpgrade)
	}
	if cfg.MaxTokenBytes != 0 {
		if cfg.MaxTokenBytes < minMaxToken || cfg.MaxTokenBytes > 64<<20 {
			return nil, cfgErr("maxTokenBytes", "%d is not within %d and %d", cfg.MaxTokenBytes, minMaxToken, 64<<20)
		}
		m.maxToken = cfg.MaxTokenBytes
	}
	m.scanStrings = m.id || m.mobile || m.card || len(m.regexes) > 0
	m.anyRule = m.scanStrings || len(m.paths) > 0
	return m, nil
}

// Config returns the configuration m was compiled from.
func (m *Masker) Config() Config { return m.cfg }

// validHeaderName: a field name is a token (RFC 9110 §5.1).
func validHeaderName(s string) bool { return isToken(s) }

func validTypePattern(t string) bool {
	switch {
	case t == "*":
		return true
	case strings.HasPrefix(t, "+"):
		return len(t) > 1 && !strings.ContainsAny(t, "/; ")
	}
	typ, sub, ok := strings.Cut(t, "/")
	return ok && typ != "" && sub != "" && typ != "*" && !strings.ContainsAny(t, "; ") && strings.Count(t, "/") == 1
}

// keeps returns how many runes of an n-rune value stay in clear at each
// end: KeepFirst and KeepLast, unless that leaves less than half masked.
func (m *Masker) keeps(n int) (first, last int) {
	first, last = m.keepFirst, m.keepLast
	if first+last < n {
		return first, last
	}
	avail := n - (n+1)/2 // at least half masked, and at least one rune
	first = min(first, avail)
	last = min(last, avail-first)
	return first, last
}

// appendMasked appends s with all but the kept runes replaced by the mask
// character.
func (m *Masker) appendMasked(dst, s []byte) []byte {
	n := utf8.RuneCount(s)
	first, last := m.keeps(n)
	i := 0
	for k := 0; k < n; k++ {
		_, size := utf8.DecodeRune(s[i:])
		if k < first || k >= n-last {
			dst = append(dst, s[i:i+size]...)
		} else {
			dst = append(dst, m.maskChar...)
		}
		i += size
	}
	return dst
}
