package httpproxy

import "bytes"

// The one pass over a plain head (issue 14), a request's (LeanRequest)
// or, on the fast path, a response's (leanResponse): it finds the head's
// end, each field line's name, colon and value, checks every name and
// value as httpguts.ValidHeaderFieldName and ValidHeaderFieldValue do,
// and notes which names are canonical already (those
// textproto.CanonicalMIMEHeaderKey returns as they are). Before, the head
// was searched for its end (headEnd, PeekHeader's), its lines counted,
// then each line searched for its LF and colon, its name and value checked
// and its name canonicalised, in separate walks.
//
// It takes the heads those walks took (leanHead, then leanFields or
// rawFields), no others: every line ends in CRLF, the first LF ends the
// request line, and each field line is a non-empty token, a colon and a
// value of no control byte but HTAB, so the blank line it stops at is the
// one headEnd finds (FuzzHeadScan; FuzzLeanRequest holds the parse to
// http.ReadRequest with the end found here and with PeekHeader's).

// maxScanFields: a head of more field lines is left to http.ReadRequest.
const maxScanFields = 32

// scanField is one field line of a scanned head: name b[start:colon],
// value b[colon+1:end] (untrimmed; end is the line's CR).
type scanField struct {
	start, colon, end int32
	canon             bool // the name is in canonical form
}

// headScan is what scan found in a head.
type headScan struct {
	n    int // the head's length, through the blank line
	line int // the request line's length (its CR excluded)
	nf   int // field lines, in f[:nf]
	f    [maxScanFields]scanField
}

// Byte classes of a field name: not a token byte, a token byte but a
// letter, a lower-case and an upper-case letter.
const (
	notToken = iota
	tokenByte
	lowerByte
	upperByte
)

// nameClass is the class of each byte; valueByte marks the bytes
// ValidHeaderFieldValue allows (all but the controls, HTAB excepted).
var nameClass, valueByte = func() (n [256]uint8, v [256]bool) {
	for c := 0; c < 256; c++ {
		switch {
		case 'a' <= c && c <= 'z':
			n[c] = lowerByte
		case 'A' <= c && c <= 'Z':
			n[c] = upperByte
		case '0' <= c && c <= '9', c < 0x7f && bytes.IndexByte([]byte("!#$%&'*+-.^_`|~"), byte(c)) >= 0:
			n[c] = tokenByte
		}
		v[c] = c == '\t' || c >= ' ' && c != 0x7f
	}
	return n, v
}()

// scan scans the head at the start of b, or reports false if b holds no
// whole head of that shape (or one of more than maxScanFields fields).
func (s *headScan) scan(b []byte) bool {
	j := bytes.IndexByte(b, '\n')
	if j < 1 || b[j-1] != '\r' {
		return false
	}
	s.line, s.nf = j-1, 0
	i := j + 1
	for {
		if i+1 >= len(b) {
			return false // not whole yet
		}
		if b[i] == '\r' {
			if b[i+1] != '\n' {
				return false
			}
			s.n = i + 2
			return true
		}
		if s.nf == maxScanFields {
			return false
		}
		start := i
		canon, upper := true, true // upper: the next letter is to be upper-case
		for ; i < len(b) && b[i] != ':'; i++ {
			c := b[i]
			switch nameClass[c] {
			case notToken:
				return false
			case lowerByte:
				canon = canon && !upper
			case upperByte:
				canon = canon && upper
			}
			upper = c == '-'
		}
		if i == start || i >= len(b) {
			return false
		}
		colon := i
		for i++; i < len(b) && valueByte[b[i]]; i++ {
		}
		if i+1 >= len(b) || b[i] != '\r' || b[i+1] != '\n' {
			return false
		}
		s.f[s.nf] = scanField{start: int32(start), colon: int32(colon), end: int32(i), canon: canon}
		s.nf++
		i += 2
	}
}
