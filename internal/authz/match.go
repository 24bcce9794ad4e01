package authz

import (
	"strconv"
	"strings"
)

// pattern is one compiled match string: exact, prefix ("abc*"), suffix
// ("*abc") or any non-empty value ("*").
type pattern struct {
	kind patternKind
	s    string
}

type patternKind uint8

const (
	exact patternKind = iota
	prefix
	suffix
	present
)

// patterns is a list; empty means "not given".
type patterns []pattern

func compilePatterns(vs []string) patterns {
	var ps patterns
	for _, v := range vs {
		switch {
		case v == "*":
			ps = append(ps, pattern{kind: present})
		case strings.HasSuffix(v, "*"):
			ps = append(ps, pattern{kind: prefix, s: v[:len(v)-1]})
		case strings.HasPrefix(v, "*"):
			ps = append(ps, pattern{kind: suffix, s: v[1:]})
		default:
			ps = append(ps, pattern{kind: exact, s: v})
		}
	}
	return ps
}

func (p pattern) match(v string) bool {
	if v == "" {
		return false // unknown values match nothing, not even "*"
	}
	switch p.kind {
	case exact:
		return v == p.s
	case prefix:
		return strings.HasPrefix(v, p.s)
	case suffix:
		return strings.HasSuffix(v, p.s)
	}
	return true
}

func (ps patterns) any(v string) bool {
	for _, p := range ps {
		if p.match(v) {
			return true
		}
	}
	return false
}

// anyFold is any, ignoring case (host names, RFC 4343). It does not
// allocate.
func (ps patterns) anyFold(v string) bool {
	if v == "" {
		return false
	}
	for _, p := range ps {
		switch n := len(p.s); p.kind {
		case exact:
			if strings.EqualFold(v, p.s) {
				return true
			}
		case prefix:
			if len(v) >= n && strings.EqualFold(v[:n], p.s) {
				return true
			}
		case suffix:
			if len(v) >= n && strings.EqualFold(v[len(v)-n:], p.s) {
				return true
			}
		default:
			return true
		}
	}
	return false
}

// anyHeader is any for a header's value: a header sent empty is present,
// so it matches "*" (Istio's presence match, Envoy's present_match).
func (ps patterns) anyHeader(v string) bool {
	if v != "" {
		return ps.any(v)
	}
	for _, p := range ps {
		if p.kind == present {
			return true
		}
	}
	return false
}

// allows: not given, or v matches one.
func (ps patterns) allows(v string) bool { return len(ps) == 0 || ps.any(v) }

// refuses: v matches none (true when not given).
func (ps patterns) refuses(v string) bool { return !ps.any(v) }

// portMatch is a port name, or a number when num > 0.
type portMatch struct {
	name string
	num  int
}

func compilePorts(vs []string) []portMatch {
	var out []portMatch
	for _, v := range vs {
		if n, err := strconv.Atoi(v); err == nil {
			out = append(out, portMatch{num: n})
		} else {
			out = append(out, portMatch{name: v})
		}
	}
	return out
}

func anyPort(ps []portMatch, r *Request) bool {
	for _, p := range ps {
		if p.num > 0 && p.num == r.PortNumber || p.num == 0 && p.name == r.Port {
			return true
		}
	}
	return false
}

// MQTT topic filters (MQTT 3.1.1 §4.7, MQTT 5 §4.7): levels separated by
// '/', '+' matches exactly one level, '#' (last) the parent level and any
// number below; a filter starting with a wildcard does not match topics
// starting with '$'.

// topicMatches reports whether a topic name matches a filter (split into
// levels). It does not allocate.
func topicMatches(filter []string, topic string) bool {
	if strings.HasPrefix(topic, "$") && len(filter) > 0 && (filter[0] == "+" || filter[0] == "#") {
		return false
	}
	pos, more := 0, true
	for _, l := range filter {
		if l == "#" {
			return true
		}
		if !more {
			return false
		}
		var lvl string
		if end := strings.IndexByte(topic[pos:], '/'); end < 0 {
			lvl, more = topic[pos:], false
		} else {
			lvl, pos = topic[pos:pos+end], pos+end+1
		}
		if l != "+" && l != lvl {
			return false
		}
	}
	return !more
}

// filterCovers reports whether every topic that subscription filter sub
// can receive matches filter p.
func filterCovers(p []string, sub string) bool {
	f := strings.Split(sub, "/")
	if strings.HasPrefix(f[0], "$") && (p[0] == "+" || p[0] == "#") {
		return false
	}
	for i, pl := range p {
		if pl == "#" {
			return true
		}
		if i >= len(f) {
			return false
		}
		switch fl := f[i]; {
		case fl == "#":
			return false
		case fl == "+":
			if pl != "+" {
				return false
			}
		case pl != "+" && pl != fl:
			return false
		}
	}
	return len(f) == len(p)
}

// filterOverlaps reports whether some topic matches both filter p and
// subscription filter sub.
func filterOverlaps(p []string, sub string) bool {
	f := strings.Split(sub, "/")
	for i := 0; ; i++ {
		switch {
		case i == len(p) && i == len(f):
			return true
		case i == len(p):
			return f[i] == "#"
		case i == len(f):
			return p[i] == "#"
		}
		pl, fl := p[i], f[i]
		wild := func(l string) bool { return l == "+" || l == "#" }
		if i == 0 && (wild(pl) && strings.HasPrefix(fl, "$") || wild(fl) && strings.HasPrefix(pl, "$")) {
			return false
		}
		if pl == "#" || fl == "#" {
			return true
		}
		if pl != "+" && fl != "+" && pl != fl {
			return false
		}
	}
}
