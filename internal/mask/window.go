package mask

import (
	"unicode/utf16"
	"unicode/utf8"
)

// window scans text too long to hold at once (a long JSON string value,
// or a text body) in pieces of up to maxToken bytes. Consecutive pieces
// overlap by up to 256 bytes, and a piece never ends inside a group of
// digits, so every detector match lies wholly inside one piece.
type window struct {
	m      *Masker
	buf    []byte // decoded text not yet written
	whole  bool   // mask every character (a value a mask path names)
	escape bool   // write JSON-escaped (inside a string)
	runes  int    // runes written so far (whole)
	spans  []span
	tmp    []byte
	counts map[string]int
}

// push appends text and writes to dst what can no longer change.
func (w *window) push(dst, text []byte, final bool) []byte {
	w.buf = append(w.buf, text...)
	if !final && len(w.buf) < w.m.maxToken {
		return dst
	}
	cut := len(w.buf)
	if !final {
		cut = runeStart(w.buf, len(w.buf)-overlap)
		if !w.whole {
			j := cut
			for j > cut-overlap && j > 0 && groupByte(w.buf[j-1]) {
				j--
			}
			if j > cut-overlap {
				cut = j
			}
			// else: a run of digits and separators longer than the
			// overlap: no match can lie across the cut.
		}
	}
	var out []byte
	if w.whole {
		out = w.maskWhole(w.tmp[:0], w.buf[:cut], final)
	} else {
		w.spans = w.m.findSpans(w.spans[:0], w.buf)
		out = w.tmp[:0]
		prev := 0
		for _, s := range w.spans {
			if s.start >= cut {
				break
			}
			if s.end > cut { // a regex match across the cut
				if s.start > cut-overlap {
					cut = s.start
					break
				}
				out = append(out, w.buf[prev:s.start]...)
				for range utf8.RuneCount(w.buf[s.start:cut]) {
					out = append(out, w.m.maskChar...)
				}
				w.counts[s.label]++
				prev = cut
				break
			}
			out = append(out, w.buf[prev:s.start]...)
			out = w.m.appendMasked(out, w.buf[s.start:s.end])
			w.counts[s.label]++
			prev = s.end
		}
		if prev < cut {
			out = append(out, w.buf[prev:cut]...)
		}
	}
	w.tmp = out
	if w.escape {
		dst = appendEscaped(dst, out)
	} else {
		dst = append(dst, out...)
	}
	w.buf = w.buf[:copy(w.buf, w.buf[cut:])]
	return dst
}

// maskWhole masks every rune of text but the first keepFirst of the whole
// value and, when final, its last keepLast.
func (w *window) maskWhole(dst, text []byte, final bool) []byte {
	n := utf8.RuneCount(text)
	last := 0
	if final {
		last = w.m.keepLast
	}
	for k, i := 0, 0; k < n; k++ {
		_, size := utf8.DecodeRune(text[i:])
		if w.runes < w.m.keepFirst || k >= n-last {
			dst = append(dst, text[i:i+size]...)
		} else {
			dst = append(dst, w.m.maskChar...)
		}
		w.runes++
		i += size
	}
	if final {
		w.counts[LabelJSONPath]++
	}
	return dst
}

// groupByte reports whether c may be part of a detector match.
func groupByte(c byte) bool {
	return isDigit(c) || c == ' ' || c == '-' || c == '+' || c == 'X' || c == 'x'
}

// runeStart moves i back to the start of the rune it is in (at most 3).
func runeStart(b []byte, i int) int {
	for k := 0; k < 3 && i > 0 && i < len(b) && !utf8.RuneStart(b[i]); k++ {
		i--
	}
	return i
}

// appendEscaped appends s as the inside of a JSON string. Bytes that are
// not valid UTF-8 pass as they are (encoding/json accepts them too).
func appendEscaped(dst, s []byte) []byte {
	const hex = "0123456789abcdef"
	for i := 0; i < len(s); {
		start := i
		for i < len(s) && s[i] >= 0x20 && s[i] != '"' && s[i] != '\\' {
			i++
		}
		dst = append(dst, s[start:i]...)
		if i == len(s) {
			break
		}
		c := s[i]
		i++
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		}
	}
	return dst
}

func hexVal(c byte) (rune, bool) {
	switch {
	case c >= '0' && c <= '9':
		return rune(c - '0'), true
	case c >= 'a' && c <= 'f':
		return rune(c - 'a' + 10), true
	case c >= 'A' && c <= 'F':
		return rune(c - 'A' + 10), true
	}
	return 0, false
}

func hex4(b []byte) rune {
	var r rune
	for _, c := range b[:4] {
		v, _ := hexVal(c)
		r = r<<4 | v
	}
	return r
}

// decodeString appends the decoded form of raw, the bytes of a JSON string
// between its quotes (escapes already checked), and returns how many bytes
// of raw it consumed: unless final, it stops before an escape it cannot
// decode yet (incomplete, or a high surrogate whose pair may follow). A
// lone surrogate decodes to U+FFFD.
func decodeString(dst, raw []byte, final bool) ([]byte, int) {
	i := 0
	for i < len(raw) {
		j := i
		for j < len(raw) && raw[j] != '\\' {
			j++
		}
		dst = append(dst, raw[i:j]...)
		i = j
		if i == len(raw) {
			break
		}
		if i+2 > len(raw) {
			return dst, i
		}
		c := raw[i+1]
		if c != 'u' {
			switch c {
			case 'b':
				c = '\b'
			case 'f':
				c = '\f'
			case 'n':
				c = '\n'
			case 'r':
				c = '\r'
			case 't':
				c = '\t'
			}
			dst = append(dst, c)
			i += 2
			continue
		}
		if i+6 > len(raw) {
			return dst, i
		}
		r := hex4(raw[i+2:])
		if utf16.IsSurrogate(r) {
			if r < 0xdc00 {
				if i+12 <= len(raw) && raw[i+6] == '\\' && raw[i+7] == 'u' {
					if d := utf16.DecodeRune(r, hex4(raw[i+8:])); d != utf8.RuneError {
						dst = utf8.AppendRune(dst, d)
						i += 12
						continue
					}
				} else if !final && i+12 > len(raw) {
					return dst, i
				}
			}
			r = utf8.RuneError
		}
		dst = utf8.AppendRune(dst, r)
		i += 6
	}
	return dst, i
}
