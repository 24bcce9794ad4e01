package mask

import (
	"encoding/binary"
	"unicode"
	"unicode/utf8"
)

// Digits of other scripts. A mobile number typed with a Chinese input
// method in full-width mode is "１３８１２３４５６７８"; people read it, and
// backends that normalise (NFKC, Python's int(), Java's Character.digit)
// parse it, as 13812345678. So the detectors read every Unicode decimal
// digit (category Nd) as its ASCII digit, and common wide spaces and
// dashes as the ' ' and '-' that group digits. User regexes still see the
// text as written.

// asciiOf returns the ASCII byte a non-ASCII rune stands for in a number,
// if any.
func asciiOf(r rune) (byte, bool) {
	switch r {
	case 0x00a0, 0x2007, 0x2009, 0x202f, 0x3000: // no-break, figure, thin, narrow no-break, ideographic spaces
		return ' ', true
	case 0x2010, 0x2011, 0x2012, 0x2013, 0x2014, 0x2212, 0xfe63, 0xff0d: // hyphens, dashes, minus signs
		return '-', true
	}
	if r < utf8.RuneSelf || r >= 0x3400 && r <= 0x9fff || r >= 0xac00 && r <= 0xd7ff || !unicode.Is(unicode.Nd, r) {
		// (Han and Hangul, the common non-ASCII text here, hold no digits.)
		return 0, false
	}
	// Unicode keeps decimal digits in runs of ten from 0 to 9 (stability
	// policy), and every range of unicode.Nd is such runs (see the test).
	for _, rg := range unicode.Nd.R16 {
		if r >= rune(rg.Lo) && r <= rune(rg.Hi) {
			return byte('0' + (r-rune(rg.Lo))%10), true
		}
	}
	for _, rg := range unicode.Nd.R32 {
		if r >= rune(rg.Lo) && r <= rune(rg.Hi) {
			return byte('0' + (r-rune(rg.Lo))%10), true
		}
	}
	return 0, false
}

// findDigitsAnyScript is findDigits on text with non-ASCII digits and
// separators read as ASCII (asciiOf); the spans are in text's offsets.
// Text that is all ASCII, or has none of them, costs one pass over its
// non-ASCII runes.
func (m *Masker) findDigitsAnyScript(dst []span, text []byte) []span {
	first := -1
	for i := nonASCII(text, 0); i < len(text); i = nonASCII(text, i) {
		r, size := utf8.DecodeRune(text[i:])
		if _, ok := asciiOf(r); ok {
			first = i
			break
		}
		i += size
	}
	if first < 0 {
		return m.findDigits(dst, text)
	}
	norm := make([]byte, first, len(text))
	copy(norm, text[:first])
	at := make([]int, first, len(text)+1) // at[i]: text's offset of norm[i]
	for i := range first {
		at[i] = i
	}
	for i := first; i < len(text); {
		r, size := utf8.DecodeRune(text[i:])
		if c, ok := asciiOf(r); ok && size > 1 {
			norm = append(norm, c)
			at = append(at, i)
		} else {
			norm = append(norm, text[i:i+size]...)
			for k := range size {
				at = append(at, i+k)
			}
		}
		i += size
	}
	at = append(at, len(text))
	n := len(dst)
	dst = m.findDigits(dst, norm)
	for k := n; k < len(dst); k++ {
		dst[k].start, dst[k].end = at[dst[k].start], at[dst[k].end]
	}
	return dst
}

// nonASCII returns the offset of the first byte from i on that is not
// ASCII, or len(b); it tests eight bytes at a time.
func nonASCII(b []byte, i int) int {
	for ; i+8 <= len(b); i += 8 {
		if binary.LittleEndian.Uint64(b[i:])&0x8080808080808080 != 0 {
			break
		}
	}
	for ; i < len(b) && b[i] < utf8.RuneSelf; i++ {
	}
	return i
}
