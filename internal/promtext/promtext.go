// Package promtext reads the Prometheus text exposition format, the
// /metrics fogmesh's agents and control plane serve, into samples: what
// `fogmesh top`, `fogmesh check` and the control plane's web UI compute
// rates and percentiles from. It reads only what it needs (name, labels,
// value) and skips comments and timestamps. Pure: no I/O beyond the
// io.Reader.
package promtext

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
)

// Sample is one series' value.
type Sample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// Limits bound what Parse accepts from a (possibly hostile) endpoint.
const (
	MaxLineBytes = 64 << 10
	MaxSamples   = 1 << 20
)

// Parse reads every sample of r. A malformed line is an error naming its
// line number.
func Parse(r io.Reader) ([]Sample, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), MaxLineBytes)
	var out []Sample
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		s, err := ParseLine(line)
		if err != nil {
			return out, fmt.Errorf("promtext: line %d: %w", n, err)
		}
		if len(out) == MaxSamples {
			return out, fmt.Errorf("promtext: more than %d samples", MaxSamples)
		}
		out = append(out, s)
	}
	if err := sc.Err(); err != nil {
		return out, fmt.Errorf("promtext: %w", err)
	}
	return out, nil
}

// ParseLine reads one sample line: name{labels} value [timestamp].
func ParseLine(line string) (Sample, error) {
	i := 0
	for i < len(line) && isNameChar(line[i], i == 0) {
		i++
	}
	if i == 0 {
		return Sample{}, fmt.Errorf("no metric name in %q", clip(line))
	}
	s := Sample{Name: line[:i], Labels: map[string]string{}}
	rest := line[i:]
	if strings.HasPrefix(rest, "{") {
		var err error
		if rest, err = parseLabels(rest[1:], s.Labels); err != nil {
			return Sample{}, fmt.Errorf("%s: %w", s.Name, err)
		}
	}
	fields := strings.Fields(rest)
	if len(fields) < 1 || len(fields) > 2 {
		return Sample{}, fmt.Errorf("%s: want a value and an optional timestamp, got %q", s.Name, clip(rest))
	}
	v, err := parseValue(fields[0])
	if err != nil {
		return Sample{}, fmt.Errorf("%s: %w", s.Name, err)
	}
	s.Value = v
	return s, nil
}

func parseValue(f string) (float64, error) {
	switch f {
	case "+Inf", "Inf":
		return math.Inf(1), nil
	case "-Inf":
		return math.Inf(-1), nil
	case "NaN":
		return math.NaN(), nil
	}
	v, err := strconv.ParseFloat(f, 64)
	if err != nil {
		return 0, fmt.Errorf("bad value %q", clip(f))
	}
	return v, nil
}

// parseLabels reads `a="x",b="y"}` into m and returns what follows.
func parseLabels(s string, m map[string]string) (string, error) {
	for {
		s = strings.TrimLeft(s, " ")
		if strings.HasPrefix(s, "}") {
			return s[1:], nil
		}
		i := 0
		for i < len(s) && isNameChar(s[i], i == 0) && s[i] != ':' {
			i++
		}
		if i == 0 {
			return "", fmt.Errorf("bad label name at %q", clip(s))
		}
		name := s[:i]
		s = strings.TrimLeft(s[i:], " ")
		if !strings.HasPrefix(s, `="`) {
			return "", fmt.Errorf("label %s: want =\"", name)
		}
		s = s[2:]
		var b strings.Builder
		closed := false
		for j := 0; j < len(s); j++ {
			c := s[j]
			if c == '"' {
				s, closed = s[j+1:], true
				break
			}
			if c == '\\' && j+1 < len(s) {
				j++
				switch s[j] {
				case 'n':
					b.WriteByte('\n')
				default: // \\ and \"
					b.WriteByte(s[j])
				}
				continue
			}
			b.WriteByte(c)
		}
		if !closed {
			return "", fmt.Errorf("label %s: unterminated value", name)
		}
		if _, dup := m[name]; dup {
			return "", fmt.Errorf("label %s twice", name)
		}
		m[name] = b.String()
		s = strings.TrimLeft(s, " ")
		if strings.HasPrefix(s, ",") {
			s = s[1:]
		} else if !strings.HasPrefix(s, "}") {
			return "", fmt.Errorf("after label %s: want , or }", name)
		}
	}
}

func isNameChar(c byte, first bool) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '_', c == ':':
		return true
	case c >= '0' && c <= '9':
		return !first
	}
	return false
}

func clip(s string) string {
	if len(s) > 60 {
		return s[:60] + "…"
	}
	return s
}
