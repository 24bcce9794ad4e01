package main

import (
	"fmt"
	"strconv"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// termSafe is s as the CLI prints a name or message of the control
// plane's answer in a table: as is when every rune of it is graphic
// (spaces included), else quoted with Go escapes, so that no answer can
// move the cursor, recolour or clear the operator's terminal (escape
// sequences), add rows (newlines) or shift columns (tabs).
func termSafe(s string) string {
	for _, r := range s {
		if r == utf8.RuneError || !unicode.IsGraphic(r) {
			return strconv.QuoteToGraphic(s)
		}
	}
	return s
}

// jsonTermSafe is JSON b (as encoding/json writes it) with every rune a
// terminal would not show as text written as a \u escape: DEL and C1
// (U+007F to U+009F: U+009B is CSI, which a terminal takes as ESC [),
// bidirectional overrides (U+202E), other format and private-use
// characters, which encoding/json leaves raw in strings. Outside strings
// JSON has only spaces and newlines, so the result is JSON of the same
// value, printed to a terminal as it is.
func jsonTermSafe(b []byte) []byte {
	var out []byte
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		if r != '\n' && (!unicode.IsGraphic(r) || r == utf8.RuneError && n == 1) { // a byte not UTF-8 (json.RawMessage) as U+FFFD
			if out == nil {
				out = append(make([]byte, 0, len(b)+16), b[:i]...)
			}
			if r1, r2 := utf16.EncodeRune(r); r1 != utf8.RuneError {
				out = fmt.Appendf(out, `\u%04x\u%04x`, r1, r2)
			} else {
				out = fmt.Appendf(out, `\u%04x`, r)
			}
		} else if out != nil {
			out = append(out, b[i:i+n]...)
		}
		i += n
	}
	if out == nil {
		return b
	}
	return out
}
