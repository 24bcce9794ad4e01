package mask

// Over 500 lines: one streaming JSON scanner whose states refer to each other.

import (
	"errors"
	"fmt"
)

// ErrMalformed is wrapped by the error a JSON body reader returns when the
// body is not JSON and Config.OnMalformed is reject.
var ErrMalformed = errors.New("malformed JSON body")

// The streaming JSON scanner. It is a byte-at-a-time state machine (with
// fast paths inside strings) that writes every byte it reads unless a
// drop rule removes it; it holds only:
//
//   - the current string (up to MaxTokenBytes; longer values go through a
//     window) or number (up to maxNumber bytes),
//   - one frame per open object or array (the key or index, for paths),
//   - a pending comma and the whitespace after it: a comma is written
//     only once the next member is known to stay, so dropping the last
//     member of an object leaves no trailing comma.
//
// Nesting deeper than maxDepth is malformed (encoding/json's limit).

// bom is the UTF-8 byte order mark.
const bom = "\xef\xbb\xbf"

const (
	maxDepth  = 10000
	maxNumber = 4096
	maxPend   = 256 // whitespace kept after a pending comma
)

type state uint8

const (
	stValue    state = iota // a value must start (top level, after ':' or after ',' in an array)
	stArrFirst              // after '[': a value or ']'
	stObjFirst              // after '{': a key or '}'
	stObjKey                // after ',' in an object: a key
	stColon                 // after a key
	stAfter                 // after a value: ',' or a bracket; at top level, space or another value
	stString
	stNumber
	stLiteral
	stPass // the rest passes unchanged (malformed input, OnMalformed pass)
)

type frame struct {
	obj     bool
	key     []byte // decoded, kept only as deep as the longest path
	index   int    // -1 before the first element
	emitted bool   // a member or element has been written
	mask    bool   // inside a value a mask path names
}

type jsonScanner struct {
	m     *Masker
	st    state
	stack []frame
	out   []byte
	off   int64 // input offset of the current write's first byte

	tok     []byte // raw bytes of the current string (without quotes) or number
	isKey   bool
	hasEsc  bool
	esc     uint8   // 0; 1 after '\'; 2-5: after '\u' and esc-2 hex digits
	direct  bool    // string written as read (nothing to find in it)
	long    *window // the current string value is too long to hold
	valMask bool    // the object member value about to start is masked whole
	curMask bool    // the current scalar is masked whole
	num     uint8   // number state
	lit     string
	litPos  int

	topSpace  bool // space after a top-level value: another may start
	dropping  bool // inside a dropped member or element
	dropDepth int  // len(stack) when the drop started
	pendComma bool
	pend      []byte

	lead uint8 // bytes of a leading UTF-8 byte order mark read; 3 once past the start

	scratch, masked, plain, scratchNum []byte
	spans                              []span
	counts                             map[string]int
}

func newJSONScanner(m *Masker) *jsonScanner {
	return &jsonScanner{m: m, counts: map[string]int{}}
}

func (s *jsonScanner) emitByte(c byte) {
	if !s.dropping {
		s.out = append(s.out, c)
	}
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// write scans in and appends the output to dst.
func (s *jsonScanner) write(dst, in []byte) ([]byte, error) {
	s.out = dst
	i := 0
	var err error
	for i < len(in) && err == nil {
		c := in[i]
		if s.lead < 3 { // RFC 8259 §8.1: a parser may ignore a leading BOM
			if c == bom[s.lead] {
				if s.lead++; s.lead == 3 {
					s.out = append(s.out, bom...)
				}
				i++
				continue
			}
			if s.lead > 0 {
				err = errors.New("invalid byte order mark")
				continue
			}
			s.lead = 3
		}
		switch s.st {
		case stPass:
			s.out = append(s.out, in[i:]...)
			i = len(in)
		case stString:
			switch {
			case s.esc == 0:
				j := i
				for j < len(in) && in[j] != '"' && in[j] != '\\' && in[j] >= 0x20 {
					j++
				}
				if j > i {
					err = s.addTok(in[i:j])
					if err == nil {
						i = j
					}
					continue
				}
				switch {
				case c == '"':
					i++
					err = s.endString()
				case c == '\\':
					s.esc, s.hasEsc = 1, true
					if err = s.addTok(in[i : i+1]); err == nil {
						i++
					}
				default:
					err = fmt.Errorf("control character %#02x in a string", c)
				}
			case s.esc == 1:
				switch c {
				case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
					s.esc = 0
				case 'u':
					s.esc = 2
				default:
					err = fmt.Errorf(`invalid escape "\%c"`, c)
					continue
				}
				if err = s.addTok(in[i : i+1]); err == nil {
					i++
				}
			default:
				if _, ok := hexVal(c); !ok {
					err = fmt.Errorf(`invalid \u escape: %q is not a hex digit`, c)
					continue
				}
				if s.esc++; s.esc == 6 {
					s.esc = 0
				}
				if err = s.addTok(in[i : i+1]); err == nil {
					i++
				}
			}
		case stNumber:
			if next, ok := numStep(s.num, c); ok {
				if len(s.tok) >= maxNumber {
					err = fmt.Errorf("number longer than %d bytes", maxNumber)
					continue
				}
				s.num = next
				s.tok = append(s.tok, c)
				i++
				continue
			}
			if !numFinal(s.num) {
				err = fmt.Errorf("invalid number %q", string(s.tok)+string(c))
				continue
			}
			s.endNumber() // c is read again in stAfter
		case stLiteral:
			if c != s.lit[s.litPos] {
				err = fmt.Errorf("invalid literal: %q", s.lit[:s.litPos]+string(c))
				continue
			}
			i++
			if s.litPos++; s.litPos == len(s.lit) {
				s.endLiteral()
			}
		default:
			if isSpace(c) {
				if s.st == stAfter && len(s.stack) == 0 {
					s.topSpace = true
				}
				if s.pendComma && !s.dropping {
					if len(s.pend) < maxPend {
						s.pend = append(s.pend, c)
					}
				} else {
					s.emitByte(c)
				}
				i++
				continue
			}
			if err = s.structural(c); err == nil {
				i++
			}
		}
	}
	if err != nil {
		err = s.fail(err, s.off+int64(i), in[i:])
	}
	s.off += int64(len(in))
	return s.out, err
}

// close ends the body: an unfinished value is malformed.
func (s *jsonScanner) close(dst []byte) ([]byte, error) {
	s.out = dst
	if s.st == stNumber && len(s.stack) == 0 && numFinal(s.num) {
		s.endNumber()
	}
	if s.lead == 1 || s.lead == 2 {
		return s.out, s.fail(errors.New("unexpected end of body in a byte order mark"), s.off, nil)
	}
	if s.st == stPass || len(s.stack) == 0 && (s.st == stAfter || s.st == stValue) {
		return s.out, nil
	}
	return s.out, s.fail(errors.New("unexpected end of body"), s.off, nil)
}

// fail handles malformed input at offset off; rest is the unread input.
func (s *jsonScanner) fail(err error, off int64, rest []byte) error {
	if s.m.rejectMalformed {
		s.st = stPass
		return fmt.Errorf("%w at byte %d: %v", ErrMalformed, off, err)
	}
	// Pass the rest through: first what was held back.
	s.dropping = false
	if s.lead < 3 {
		s.out = append(s.out, bom[:s.lead]...)
		s.lead = 3
	}
	if s.pendComma {
		s.out = append(s.out, ',')
		s.out = append(s.out, s.pend...)
	}
	switch s.st {
	case stString:
		if s.long != nil {
			s.out = s.long.push(s.out, nil, true)
		} else if !s.direct {
			s.out = append(s.out, '"')
		}
		s.out = append(s.out, s.tok...)
	case stNumber:
		s.out = append(s.out, s.tok...)
	case stLiteral:
		s.out = append(s.out, s.lit[:s.litPos]...)
	}
	s.out = append(s.out, rest...)
	s.st = stPass
	return nil
}

func (s *jsonScanner) structural(c byte) error {
	switch s.st {
	case stValue:
		return s.beginValue(c)
	case stArrFirst:
		if c == ']' {
			s.closeContainer(c)
			return nil
		}
		return s.beginValue(c)
	case stObjFirst, stObjKey:
		if c == '}' && s.st == stObjFirst {
			s.closeContainer(c)
			return nil
		}
		if c != '"' {
			return fmt.Errorf("unexpected %q where an object key should start", c)
		}
		s.startString(true)
	case stColon:
		if c != ':' {
			return fmt.Errorf("unexpected %q after an object key", c)
		}
		s.emitByte(':')
		s.st = stValue
	case stAfter:
		n := len(s.stack)
		if n == 0 {
			if !s.topSpace {
				return fmt.Errorf("unexpected %q after the top-level value", c)
			}
			s.topSpace = false
			return s.beginValue(c) // a stream of values (NDJSON)
		}
		f := &s.stack[n-1]
		switch {
		case c == ',':
			if !s.dropping {
				s.pendComma, s.pend = true, s.pend[:0]
			}
			if f.obj {
				s.st = stObjKey
			} else {
				s.st = stValue
			}
		case c == '}' && f.obj, c == ']' && !f.obj:
			s.closeContainer(c)
		default:
			return fmt.Errorf("unexpected %q after a value", c)
		}
	}
	return nil
}

// flushPend writes the comma and space held before a member that stays.
func (s *jsonScanner) flushPend(f *frame) {
	if s.pendComma {
		if f.emitted {
			s.out = append(s.out, ',')
		}
		s.out = append(s.out, s.pend...)
		s.pendComma = false
	}
	f.emitted = true
}

func (s *jsonScanner) startDrop() {
	s.dropping, s.dropDepth = true, len(s.stack)
	s.pendComma = false
}

func (s *jsonScanner) beginValue(c byte) error {
	mask := false
	if n := len(s.stack); n > 0 {
		f := &s.stack[n-1]
		if f.obj {
			mask = s.valMask
		} else {
			f.index++
			if !s.dropping {
				drop, pm := s.m.pathAction(s.stack)
				if drop {
					s.startDrop()
				} else {
					s.flushPend(f)
					mask = pm || f.mask
				}
			}
		}
	}
	s.curMask = mask && !s.dropping
	switch {
	case c == '{' || c == '[':
		if len(s.stack) >= maxDepth {
			return fmt.Errorf("nested deeper than %d", maxDepth)
		}
		s.emitByte(c)
		f := frame{obj: c == '{', index: -1, mask: s.curMask}
		if n := len(s.stack); n < cap(s.stack) {
			f.key = s.stack[:n+1][n].key[:0] // reuse the key buffer
		}
		s.stack = append(s.stack, f)
		if c == '{' {
			s.st = stObjFirst
		} else {
			s.st = stArrFirst
		}
	case c == '"':
		s.startString(false)
	case c == '-' || isDigit(c):
		s.st = stNumber
		s.num, _ = numStep(0, c)
		s.tok = append(s.tok[:0], c)
	case c == 't':
		s.st, s.lit, s.litPos = stLiteral, "true", 1
	case c == 'f':
		s.st, s.lit, s.litPos = stLiteral, "false", 1
	case c == 'n':
		s.st, s.lit, s.litPos = stLiteral, "null", 1
	default:
		return fmt.Errorf("unexpected %q where a value should start", c)
	}
	return nil
}

func (s *jsonScanner) closeContainer(c byte) {
	s.emitByte(c)
	s.stack = s.stack[:len(s.stack)-1]
	s.valueEnd()
}

func (s *jsonScanner) valueEnd() {
	if s.dropping && len(s.stack) == s.dropDepth {
		s.dropping = false
	}
	s.st = stAfter
}

func (s *jsonScanner) startString(isKey bool) {
	s.st, s.isKey = stString, isKey
	s.tok, s.hasEsc, s.esc, s.long = s.tok[:0], false, 0, nil
	s.direct = !isKey && !s.dropping && !s.curMask && !s.m.scanStrings
	if s.direct {
		s.out = append(s.out, '"')
	}
}

func (s *jsonScanner) addTok(b []byte) error {
	switch {
	case s.dropping:
		return nil
	case s.direct:
		s.out = append(s.out, b...)
		return nil
	case s.long != nil:
		s.tok = append(s.tok, b...)
		if len(s.tok) >= 64<<10 {
			s.spill(false)
		}
		return nil
	}
	s.tok = append(s.tok, b...)
	if len(s.tok) > s.m.maxToken {
		if s.isKey {
			return fmt.Errorf("object key longer than %d bytes", s.m.maxToken)
		}
		s.long = &window{m: s.m, whole: s.curMask, escape: true, counts: s.counts}
		s.out = append(s.out, '"')
		s.spill(false)
	}
	return nil
}

// spill moves the decodable part of tok into the long string's window.
func (s *jsonScanner) spill(final bool) {
	dec, n := decodeString(s.scratch[:0], s.tok, final)
	s.scratch = dec
	s.tok = s.tok[:copy(s.tok, s.tok[n:])]
	s.out = s.long.push(s.out, dec, final)
}

// text returns the current string token decoded.
func (s *jsonScanner) text() []byte {
	if !s.hasEsc {
		return s.tok
	}
	s.scratch, _ = decodeString(s.scratch[:0], s.tok, true)
	return s.scratch
}

// appendString appends the masked form of a complete string token.
func (s *jsonScanner) appendString(whole bool) {
	t := s.text()
	switch {
	case whole:
		s.masked = s.m.appendMasked(s.masked[:0], t)
		s.counts[LabelJSONPath]++
	case s.m.scanStrings:
		if s.spans = s.m.findSpans(s.spans[:0], t); len(s.spans) > 0 {
			s.masked = s.m.maskSpans(s.masked[:0], t, s.spans, s.counts)
			break
		}
		if n := numberIn(t); n != nil && s.maskNumber(n) { // "1.3812345678e10": a number in a string
			break
		}
		fallthrough
	default:
		s.out = append(s.out, '"')
		s.out = append(s.out, s.tok...)
		s.out = append(s.out, '"')
		return
	}
	s.out = append(s.out, '"')
	s.out = appendEscaped(s.out, s.masked)
	s.out = append(s.out, '"')
}

func (s *jsonScanner) endString() error {
	if s.dropping {
		if s.isKey {
			s.st = stColon
		} else {
			s.valueEnd()
		}
		return nil
	}
	if s.isKey {
		f := &s.stack[len(s.stack)-1]
		if len(s.stack) <= s.m.maxPathLen {
			f.key = append(f.key[:0], s.text()...)
		}
		drop, pm := s.m.pathAction(s.stack)
		s.st = stColon
		if drop {
			s.startDrop()
			return nil
		}
		s.flushPend(f)
		s.valMask = pm || f.mask
		s.appendString(false)
		return nil
	}
	switch {
	case s.direct:
		s.out = append(s.out, '"')
	case s.long != nil:
		s.spill(true)
		s.out = append(s.out, '"')
		s.long = nil
	default:
		s.appendString(s.curMask)
	}
	s.valueEnd()
	return nil
}

// endNumber writes the number, or a masked string for one a path or a
// detector names.
func (s *jsonScanner) endNumber() {
	if !s.dropping {
		switch {
		case s.curMask:
			s.masked = s.m.appendMasked(s.masked[:0], s.tok)
			s.counts[LabelJSONPath]++
		case s.m.scanStrings:
			if s.maskNumber(s.tok) {
				break
			}
			if s.spans = s.m.findSpans(s.spans[:0], s.tok); len(s.spans) > 0 {
				s.masked = s.m.maskSpans(s.masked[:0], s.tok, s.spans, s.counts)
				break
			}
			fallthrough
		default:
			s.out = append(s.out, s.tok...)
			s.valueEnd()
			return
		}
		s.out = append(s.out, '"')
		s.out = appendEscaped(s.out, s.masked)
		s.out = append(s.out, '"')
	}
	s.valueEnd()
}

// maskNumber sets s.masked to the masked value of the number tok and
// reports true when its value holds a match: its exact value in plain
// decimal notation (number.go), or the integer a float64 parser rounds it
// to. When neither does, the caller still scans tok as written: a number
// that only looks like personal data ("13812345678e5") is masked too.
func (s *jsonScanner) maskNumber(tok []byte) bool {
	p, ok := plainDecimal(s.plain[:0], tok)
	s.plain = p
	if !ok {
		return false
	}
	if string(p) != string(tok) { // else the caller scans tok
		if s.spans = s.m.findSpans(s.spans[:0], p); len(s.spans) > 0 {
			s.masked = s.m.maskSpans(s.masked[:0], p, s.spans, s.counts)
			return true
		}
	}
	r, ok := floatInteger(s.scratchNum[:0], p)
	s.scratchNum = r
	if !ok {
		return false
	}
	if s.spans = s.m.findSpans(s.spans[:0], r); len(s.spans) == 0 {
		return false
	}
	s.masked = s.m.maskSpans(s.masked[:0], r, s.spans, s.counts)
	return true
}

func (s *jsonScanner) endLiteral() {
	if !s.dropping {
		s.out = append(s.out, s.lit...)
	}
	s.valueEnd()
}

// Number states (RFC 8259 §6): 0 start, 1 after '-', 2 after a leading
// 0, 3 in the integer part, 4 after '.', 5 in the fraction, 6 after 'e',
// 7 after the exponent's sign, 8 in the exponent.
func numStep(st uint8, c byte) (uint8, bool) {
	d := isDigit(c)
	switch st {
	case 0:
		switch {
		case c == '-':
			return 1, true
		case c == '0':
			return 2, true
		case d:
			return 3, true
		}
	case 1:
		switch {
		case c == '0':
			return 2, true
		case d:
			return 3, true
		}
	case 2, 3:
		switch {
		case d && st == 3:
			return 3, true
		case c == '.':
			return 4, true
		case c == 'e' || c == 'E':
			return 6, true
		}
	case 4, 5:
		switch {
		case d:
			return 5, true
		case st == 5 && (c == 'e' || c == 'E'):
			return 6, true
		}
	case 6:
		switch {
		case c == '+' || c == '-':
			return 7, true
		case d:
			return 8, true
		}
	case 7, 8:
		if d {
			return 8, true
		}
	}
	return st, false
}

func numFinal(st uint8) bool { return st == 2 || st == 3 || st == 5 || st == 8 }
