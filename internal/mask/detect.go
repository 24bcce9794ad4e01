package mask

import "sort"

// span is a match text[start:end) and what found it.
type span struct {
	start, end int
	label      string
}

// run is a maximal sequence of ASCII digits text[start:end).
type run struct{ start, end int }

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// maxGroupRuns bounds the digit groups one match may span (a 19-digit card
// in groups of 3 has 7).
const maxGroupRuns = 7

// findSpans appends the detector and regex matches in text, sorted and not
// overlapping (where a regex match overlaps an earlier match, the earlier
// wins).
func (m *Masker) findSpans(dst []span, text []byte) []span {
	if m.id || m.mobile || m.card {
		dst = m.findDigitsAnyScript(dst, text)
	}
	if len(m.regexes) == 0 {
		return dst
	}
	nd := len(dst)
	for i, re := range m.regexes {
		for _, loc := range re.FindAllIndex(text, -1) {
			if loc[1] > loc[0] {
				dst = append(dst, span{loc[0], loc[1], m.regexNames[i]})
			}
		}
	}
	if len(dst) == nd {
		return dst
	}
	sort.SliceStable(dst, func(i, j int) bool { return dst[i].start < dst[j].start })
	// Merge overlaps: extend the earlier span to cover the later one.
	out := dst[:1]
	for _, s := range dst[1:] {
		last := &out[len(out)-1]
		if s.start < last.end {
			last.end = max(last.end, s.end)
			continue
		}
		out = append(out, s)
	}
	return out
}

// findDigits finds identity, mobile and card numbers: groups of digit runs
// joined by single spaces or dashes, then the longest matching sequence of
// runs from each run on.
func (m *Masker) findDigits(dst []span, text []byte) []span {
	var runsBuf [16]run
	var digits [24]byte
	n := len(text)
	for i := 0; i < n; {
		if !isDigit(text[i]) {
			i++
			continue
		}
		runs := runsBuf[:0]
		j := i
		for {
			k := j
			for k < n && isDigit(text[k]) {
				k++
			}
			runs = append(runs, run{j, k})
			if k+1 < n && (text[k] == ' ' || text[k] == '-') && isDigit(text[k+1]) && len(runs) < 64 {
				j = k + 1
				continue
			}
			break
		}
		i = runs[len(runs)-1].end
		for a := 0; a < len(runs); {
			best := span{start: -1}
			nd := 0
			for b := a; b < len(runs) && b < a+maxGroupRuns; b++ {
				r := runs[b]
				if r.end-r.start > 19 || nd+r.end-r.start > 19 {
					break
				}
				if b > a && (r.end-r.start < 3 || runs[a].end-runs[a].start < 3) {
					break // grouped digits come in groups of 3 or more
				}
				nd += copy(digits[nd:], text[r.start:r.end])
				if s, ok := m.classify(digits[:nd], text, runs[a].start, r.end, b == a); ok && s.end-s.start > best.end-best.start {
					best = s
				}
			}
			if best.start < 0 {
				a++
				continue
			}
			dst = append(dst, best)
			for a < len(runs) && runs[a].start < best.end {
				a++
			}
		}
	}
	return dst
}

// classify reports whether digits (text[start:end) without separators) is
// one of the enabled detectors' numbers, and the span to mask.
func (m *Masker) classify(d []byte, text []byte, start, end int, single bool) (span, bool) {
	switch len(d) {
	case 17:
		if m.id && end < len(text) && (text[end] == 'X' || text[end] == 'x') && (end+1 == len(text) || !isDigit(text[end+1])) {
			var full [18]byte
			copy(full[:], d)
			full[17] = 'X'
			if validID(full[:]) {
				return span{start, end + 1, DetectorCNID}, true
			}
		}
	case 18:
		if m.id && validID(d) {
			return span{start, end, DetectorCNID}, true
		}
	}
	if m.card && len(d) >= 13 && len(d) <= 19 && validCard(d) {
		return span{start, end, DetectorBankCard}, true
	}
	if m.mobile {
		switch {
		case len(d) == 11 && validMobile(d):
			return span{start, end, DetectorCNMobile}, true
		case single && len(d) == 13 && d[0] == '8' && d[1] == '6' && validMobile(d[2:]):
			return span{start + 2, end, DetectorCNMobile}, true
		case single && len(d) == 15 && string(d[:4]) == "0086" && validMobile(d[4:]):
			return span{start + 4, end, DetectorCNMobile}, true
		}
	}
	return span{}, false
}

func validMobile(d []byte) bool {
	return len(d) == 11 && d[0] == '1' && d[1] >= '3' && d[1] <= '9'
}

// validCard: Luhn, a plausible first digit, and not one digit repeated.
func validCard(d []byte) bool {
	if d[0] < '2' || d[0] > '6' {
		return false
	}
	if d[0] == '2' { // Mastercard 2221-2720, 16 digits
		p := int(d[1]-'0')*100 + int(d[2]-'0')*10 + int(d[3]-'0')
		if len(d) != 16 || p < 221 || p > 720 {
			return false
		}
	}
	same := true
	for _, c := range d[1:] {
		same = same && c == d[0]
	}
	return !same && luhn(d)
}

// luhn reports whether the digits pass the Luhn (mod 10) check.
func luhn(d []byte) bool {
	sum := 0
	for i := len(d) - 1; i >= 0; i-- {
		v := int(d[i] - '0')
		if (len(d)-1-i)%2 == 1 {
			v *= 2
			if v > 9 {
				v -= 9
			}
		}
		sum += v
	}
	return sum%10 == 0
}

// idWeights are the ISO 7064 MOD 11-2 weights 2^(17-i) mod 11.
var idWeights = [17]int{7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2}

// IDCheckChar returns the check character of the first 17 digits of a
// resident identity number (test generators use it).
func IDCheckChar(d17 []byte) byte {
	sum := 0
	for i, w := range idWeights {
		sum += int(d17[i]-'0') * w
	}
	return "10X98765432"[sum%11]
}

// provinces are the first two digits of identity numbers in use.
var provinces = map[string]bool{
	"11": true, "12": true, "13": true, "14": true, "15": true,
	"21": true, "22": true, "23": true,
	"31": true, "32": true, "33": true, "34": true, "35": true, "36": true, "37": true,
	"41": true, "42": true, "43": true, "44": true, "45": true, "46": true,
	"50": true, "51": true, "52": true, "53": true, "54": true,
	"61": true, "62": true, "63": true, "64": true, "65": true,
	"71": true, "81": true, "82": true, "83": true,
}

// validID checks an 18-character identity number: province, birth date,
// check character (the last may be 'X').
func validID(d []byte) bool {
	if len(d) != 18 || !provinces[string(d[:2])] {
		return false
	}
	num := func(b []byte) int {
		v := 0
		for _, c := range b {
			v = v*10 + int(c-'0')
		}
		return v
	}
	y, mo, day := num(d[6:10]), num(d[10:12]), num(d[12:14])
	if y < 1900 || y > 2099 || mo < 1 || mo > 12 || day < 1 {
		return false
	}
	days := [13]int{0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31}[mo]
	if mo == 2 && (y%4 == 0 && y%100 != 0 || y%400 == 0) {
		days = 29
	}
	if day > days {
		return false
	}
	c := d[17]
	if c == 'x' {
		c = 'X'
	}
	return IDCheckChar(d[:17]) == c
}

// maskSpans appends text with every span masked, and counts each span's
// label in counts.
func (m *Masker) maskSpans(dst, text []byte, spans []span, counts map[string]int) []byte {
	prev := 0
	for _, s := range spans {
		dst = append(dst, text[prev:s.start]...)
		dst = m.appendMasked(dst, text[s.start:s.end])
		counts[s.label]++
		prev = s.end
	}
	return append(dst, text[prev:]...)
}

// MaskString returns s with every detector and regex match masked, and
// the number of matches.
func (m *Masker) MaskString(s string) (string, int) {
	spans := m.findSpans(nil, []byte(s))
	if len(spans) == 0 {
		return s, 0
	}
	counts := map[string]int{}
	return string(m.maskSpans(nil, []byte(s), spans, counts)), len(spans)
}
