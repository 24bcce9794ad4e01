package mask

import (
	"bytes"
	"errors"
	"strconv"
	"strings"
)

// segKind is one step of a JSON path.
type segKind uint8

const (
	segName     segKind = iota // .name or ['name']
	segAnyName                 // .*
	segIndex                   // [n]
	segAnyIndex                // [*]
)

type pathSeg struct {
	kind  segKind
	name  []byte // matched in any case (bytes.EqualFold), as backends bind members
	index int
}

type compiledPath struct {
	segs []pathSeg
	drop bool
}

// maxPathSegs bounds a path's length.
const maxPathSegs = 32

// parsePath parses the subset of JSONPath in PathRule's comment.
func parsePath(p string) (compiledPath, error) {
	var cp compiledPath
	if !strings.HasPrefix(p, "$") {
		return cp, errors.New(`must start with "$"`)
	}
	s := p[1:]
	for s != "" {
		if len(cp.segs) == maxPathSegs {
			return cp, errors.New("too many steps (at most 32)")
		}
		switch s[0] {
		case '.':
			s = s[1:]
			if strings.HasPrefix(s, ".") {
				return cp, errors.New(`recursive descent ".." is not supported`)
			}
			if strings.HasPrefix(s, "*") {
				cp.segs = append(cp.segs, pathSeg{kind: segAnyName})
				s = s[1:]
				continue
			}
			end := strings.IndexAny(s, ".[")
			if end < 0 {
				end = len(s)
			}
			name := s[:end]
			if name == "" {
				return cp, errors.New("empty member name")
			}
			if strings.ContainsAny(name, "]'\"*() ") {
				return cp, errors.New(`member name ` + strconv.Quote(name) + ` needs the ['...'] form`)
			}
			cp.segs = append(cp.segs, pathSeg{kind: segName, name: []byte(name)})
			s = s[end:]
		case '[':
			end := strings.IndexByte(s, ']')
			if end < 0 {
				return cp, errors.New(`missing "]"`)
			}
			in := s[1:end]
			switch {
			case in == "*":
				cp.segs = append(cp.segs, pathSeg{kind: segAnyIndex})
			case len(in) >= 2 && (in[0] == '\'' && in[len(in)-1] == '\'' || in[0] == '"' && in[len(in)-1] == '"'):
				name := in[1 : len(in)-1]
				if strings.ContainsAny(name, `'"\`) {
					return cp, errors.New("quoted member names may not contain quotes or backslashes")
				}
				cp.segs = append(cp.segs, pathSeg{kind: segName, name: []byte(name)})
			default:
				n, err := strconv.Atoi(in)
				if err != nil || n < 0 || in != strconv.Itoa(n) {
					return cp, errors.New(`"[` + in + `]" is not [n], [*] or ['name']`)
				}
				cp.segs = append(cp.segs, pathSeg{kind: segIndex, index: n})
			}
			s = s[end+1:]
		default:
			return cp, errors.New(`unexpected "` + s[:1] + `": steps are .name, ['name'], .*, [n] or [*]`)
		}
	}
	if len(cp.segs) == 0 {
		return cp, errors.New(`"$" alone names the whole body: name a member or element`)
	}
	return cp, nil
}

// matches reports whether the path names the value at the position the
// frames describe.
func (cp *compiledPath) matches(stack []frame) bool {
	if len(cp.segs) != len(stack) {
		return false
	}
	for i, sg := range cp.segs {
		f := &stack[i]
		switch sg.kind {
		case segName:
			// Any case: Go's encoding/json, ASP.NET Core and lenient
			// Jackson bind "NAME" to a member called name.
			if !f.obj || !bytes.EqualFold(f.key, sg.name) {
				return false
			}
		case segAnyName:
			if !f.obj {
				return false
			}
		case segIndex:
			if f.obj || f.index != sg.index {
				return false
			}
		case segAnyIndex:
			if f.obj {
				return false
			}
		}
	}
	return true
}

// pathAction returns the action for the value at stack: drop, mask, or
// neither. A drop rule wins over a mask rule.
func (m *Masker) pathAction(stack []frame) (drop, mask bool) {
	if len(stack) == 0 || len(stack) > m.maxPathLen {
		return false, false
	}
	for i := range m.paths {
		if m.paths[i].matches(stack) {
			if m.paths[i].drop {
				return true, false
			}
			mask = true
		}
	}
	return false, mask
}
