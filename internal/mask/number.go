package mask

import (
	"bytes"
	"math/big"
)

// A JSON number is personal data by its value, not by its spelling:
// 13812345678, 1.3812345678e10, 13812345678.0 and 138123456780E-1 are one
// mobile number to any backend that parses them. The detectors therefore
// see a number in plain decimal notation, computed exactly from its digits
// (never through float64, which rounds past 2^53: card numbers have up to
// 19 digits).

// maxShift bounds how far an exponent may move the decimal point of a
// number that is expanded. A larger shift makes the plain form a single
// run of more than maxShift digits (the significant digits followed by
// zeros, or zeros followed by them), and a detector match is a run of at
// most 19 digits with non-digits around it: nothing is lost by not
// expanding it.
const maxShift = 64

// plainDecimal appends the exact value of tok, a valid JSON number, in
// plain decimal notation: an optional '-', the integer part without
// leading zeros ("0" when there is none), and a '.' and the fraction
// without trailing zeros when it is not zero ("-0.0" is "0", "1.5e1" is
// "15", "15e-3" is "0.015"). It reports false, appending nothing, when the
// exponent moves the point by more than maxShift places past the digits.
func plainDecimal(dst, tok []byte) ([]byte, bool) {
	neg := len(tok) > 0 && tok[0] == '-'
	if neg {
		tok = tok[1:]
	}
	// Split into integer digits, fraction digits and exponent.
	i := 0
	for i < len(tok) && isDigit(tok[i]) {
		i++
	}
	intPart := tok[:i]
	var frac []byte
	if i < len(tok) && tok[i] == '.' {
		j := i + 1
		for j < len(tok) && isDigit(tok[j]) {
			j++
		}
		frac = tok[i+1 : j]
		i = j
	}
	exp, ok := 0, true
	if i < len(tok) && (tok[i] == 'e' || tok[i] == 'E') {
		exp, ok = parseExp(tok[i+1:])
	}
	// The significant digits are intPart+frac without leading and
	// trailing zeros; point is where the decimal point falls in them.
	lead := 0
	for lead < len(intPart) && intPart[lead] == '0' {
		lead++
	}
	digits := func(k int) byte { // the k-th digit of intPart+frac from lead
		k += lead
		if k < len(intPart) {
			return intPart[k]
		}
		return frac[k-len(intPart)]
	}
	n := len(intPart) + len(frac) - lead
	for n > 0 && digits(0) == '0' {
		lead++
		n--
	}
	for n > 0 && digits(n-1) == '0' {
		n--
	}
	if n == 0 {
		return append(dst, '0'), true // zero, whatever its exponent
	}
	if !ok {
		return dst, false
	}
	point := len(intPart) - lead + exp
	if point > n+maxShift || point < -maxShift {
		return dst, false
	}
	if neg {
		dst = append(dst, '-')
	}
	switch {
	case point <= 0:
		dst = append(dst, '0', '.')
		for range -point {
			dst = append(dst, '0')
		}
		for k := range n {
			dst = append(dst, digits(k))
		}
	case point >= n:
		for k := range n {
			dst = append(dst, digits(k))
		}
		for range point - n {
			dst = append(dst, '0')
		}
	default:
		for k := range point {
			dst = append(dst, digits(k))
		}
		dst = append(dst, '.')
		for k := point; k < n; k++ {
			dst = append(dst, digits(k))
		}
	}
	return dst, true
}

// parseExp parses an exponent ([+-]digits, leading zeros allowed); false
// when its magnitude is beyond any shift plainDecimal expands.
func parseExp(b []byte) (int, bool) {
	neg := false
	if len(b) > 0 && (b[0] == '+' || b[0] == '-') {
		neg = b[0] == '-'
		b = b[1:]
	}
	v := 0
	for _, c := range b {
		v = v*10 + int(c-'0')
		if v > 1<<20 {
			return 0, false
		}
	}
	if neg {
		v = -v
	}
	return v, true
}

// numberIn returns the number a string value holds, as lenient parsers
// read it (JavaScript's Number(), Python's float(), coercing JSON
// libraries): a JSON number with optional surrounding white space and a
// leading '+'; nil if it holds none.
func numberIn(s []byte) []byte {
	if len(s) == 0 || !isDigit(s[0]) && s[0] != '-' && s[0] != '+' && !isSpace(s[0]) {
		return nil // the common case, cheaply
	}
	for len(s) > 0 && isSpace(s[0]) {
		s = s[1:]
	}
	for len(s) > 0 && isSpace(s[len(s)-1]) {
		s = s[:len(s)-1]
	}
	if len(s) > 1 && s[0] == '+' && s[1] != '-' {
		s = s[1:]
	}
	if !isNumber(s) {
		return nil
	}
	return s
}

// floatInteger appends the integer a float64 parser (JavaScript, Python's
// float, Go's and Java's double) reads the plain decimal p as, when p is
// not an integer but rounds to one below 2^53 (where float64 integers are
// exact): 4111111111111110.9999999 reads as the card 4111111111111111.
// The rounding is done with math/big at float64's precision, round to
// nearest even, as strconv.ParseFloat does; only values with 10 to 16
// integer digits are tried, the only ones that can round to a detector's
// number.
func floatInteger(dst, p []byte) ([]byte, bool) {
	dot := bytes.IndexByte(p, '.')
	digits := dot
	if len(p) > 0 && p[0] == '-' {
		digits--
	}
	if dot < 0 || digits < 10 || digits > 16 {
		return dst, false
	}
	f, _, err := big.ParseFloat(string(p), 10, 53, big.ToNearestEven)
	if err != nil || !f.IsInt() {
		return dst, false
	}
	i, _ := f.Int(nil)
	if i.BitLen() > 53 {
		return dst, false
	}
	return i.Append(dst, 10), true
}

// isNumber reports whether b is a whole JSON number.
func isNumber(b []byte) bool {
	if len(b) == 0 || len(b) > maxNumber {
		return false
	}
	var st uint8
	for _, c := range b {
		next, ok := numStep(st, c)
		if !ok {
			return false
		}
		st = next
	}
	return numFinal(st)
}
