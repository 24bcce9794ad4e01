package mask

import (
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
)

// ErrCompressed is returned by Classify for a body to scan whose
// Content-Encoding is not identity when Config.OnCompressed is reject.
var ErrCompressed = errors.New("compressed body cannot be inspected")

// ErrContentType is returned by Classify when the request does not say
// one thing about its body: more than one Content-Type (repeated fields or
// a comma list: which one a backend reads is anyone's guess), a value that
// is no media type, or a charset the scanner cannot find digits in
// (UTF-16, UTF-32). Guessing would let a backend read as JSON what the
// masker passed as something else.
var ErrContentType = errors.New("ambiguous or unsupported Content-Type")

// ErrUpgrade is returned by CheckUpgrade for a request that asks to
// switch protocols when Config.OnUpgrade is reject.
var ErrUpgrade = errors.New("protocol upgrade cannot be inspected")

// CheckUpgrade refuses a request that asks to switch protocols (an Upgrade
// header, a Connection: upgrade, or CONNECT) when the Masker has body
// rules: the WebSocket or tunnel bytes that follow would leave unmasked.
func (m *Masker) CheckUpgrade(method string, h http.Header) error {
	if !m.anyRule || !m.rejectUpgrade {
		return nil
	}
	if method == http.MethodConnect {
		return fmt.Errorf("%w: CONNECT", ErrUpgrade)
	}
	for k, vs := range h {
		switch {
		case strings.EqualFold(k, "Upgrade"):
			return fmt.Errorf("%w: Upgrade %q", ErrUpgrade, strings.Join(vs, ", "))
		case strings.EqualFold(k, "Connection"):
			for _, v := range vs {
				for _, tok := range strings.Split(v, ",") {
					if strings.EqualFold(strings.Trim(tok, " \t"), "upgrade") {
						return fmt.Errorf("%w: Connection %q", ErrUpgrade, v)
					}
				}
			}
		}
	}
	return nil
}

// Kind says how a body is scanned.
type Kind uint8

const (
	KindPass      Kind = iota // not scanned
	KindJSON                  // the streaming JSON scanner
	KindText                  // detectors and regexes over the bytes
	KindSniff                 // no Content-Type: JSON if it starts like JSON, else not scanned
	KindSniffText             // no Content-Type: JSON if it starts like JSON, else text

	// A Kind from Classify may carry the body's content coding in its high
	// bits (Config.OnCompressed decode): NewReader decompresses the body,
	// masks it, and compresses it again.
	kindGzip    Kind = 1 << 4
	kindDeflate Kind = 2 << 4
	kindBase    Kind = 0x0f
)

// jsonTypes are the names JSON goes by besides application/json and the
// +json suffix; the content type "application/json" stands for all of
// them, as backends accept them as JSON.
var jsonTypes = map[string]bool{
	"application/json": true, "text/json": true, "application/x-json": true,
	"application/jsonl": true, "application/x-jsonlines": true, "application/json-lines": true,
	"application/ndjson": true, "application/x-ndjson": true, "application/x-json-stream": true,
}

func isJSONType(mt string) bool { return jsonTypes[mt] || strings.HasSuffix(mt, "+json") }

// Classify decides from the request headers how to scan its body. Bodies
// are only scanned when the Config has detectors, regexes or paths, and
// gRPC bodies (application/grpc*, binary frames) never are.
//
// The media type is the Content-Type value before its first ';', without
// case or surrounding space; parameters that do not parse are ignored
// (they do not make the type unknown). A request with more than one
// Content-Type, or one that is no media type, is refused (ErrContentType).
// A body without Content-Type is sniffed (KindSniff). Every coding of every
// Content-Encoding field counts.
func (m *Masker) Classify(h http.Header) (Kind, error) {
	if !m.anyRule {
		return KindPass, nil
	}
	var cts []string
	var ces []string
	for k, vs := range h { // any spelling of the names, not only the canonical one
		switch {
		case strings.EqualFold(k, "Content-Type"):
			cts = append(cts, vs...)
		case strings.EqualFold(k, "Content-Encoding"):
			ces = append(ces, vs...)
		}
	}
	mt, kind := "", KindSniff
	switch {
	case len(cts) > 1:
		return KindPass, fmt.Errorf("%w: %d Content-Type fields", ErrContentType, len(cts))
	case len(cts) == 1 && strings.Trim(cts[0], " \t") != "":
		var charset string
		var err error
		if mt, charset, err = mediaType(cts[0]); err != nil {
			return KindPass, err
		}
		if strings.HasPrefix(mt, "application/grpc") {
			return KindPass, nil // length-prefixed binary frames: never rewritten
		}
		if kind = m.kindOf(mt); kind == KindPass {
			return KindPass, nil
		}
		if !asciiCompatible(charset) {
			return KindPass, fmt.Errorf("%w: charset %q", ErrContentType, charset)
		}
	default: // no Content-Type
		if m.listed("") {
			kind = KindSniffText
		}
	}
	if cs := codings(ces); len(cs) > 0 {
		switch {
		case m.decodeCompressed && len(cs) == 1 && (strings.EqualFold(cs[0], "gzip") || strings.EqualFold(cs[0], "x-gzip")):
			return kind | kindGzip, nil
		case m.decodeCompressed && len(cs) == 1 && strings.EqualFold(cs[0], "deflate"):
			return kind | kindDeflate, nil
		case m.rejectCompressed || m.decodeCompressed:
			return KindPass, fmt.Errorf("%w: Content-Encoding %q", ErrCompressed, strings.Join(cs, ", "))
		}
		return KindPass, nil
	}
	return kind, nil
}

// kindOf returns how a body of media type mt is scanned.
func (m *Masker) kindOf(mt string) Kind {
	if !m.listed(mt) {
		return KindPass
	}
	if isJSONType(mt) {
		return KindJSON
	}
	return KindText
}

// listed reports whether Config.ContentTypes names mt ("" for a body
// without Content-Type: only "*" names it).
func (m *Masker) listed(mt string) bool {
	for _, t := range m.types {
		switch {
		case t == "*":
			return true
		case mt == "":
		case strings.HasPrefix(t, "+"):
			if strings.HasSuffix(mt, strings.ToLower(t)) {
				return true
			}
		case strings.HasSuffix(t, "/*"):
			if strings.HasPrefix(mt, strings.ToLower(t[:len(t)-1])) {
				return true
			}
		default:
			if lt := strings.ToLower(t); mt == lt || lt == "application/json" && isJSONType(mt) {
				return true
			}
		}
	}
	return false
}

// mediaType returns the lower-case media type of a Content-Type value and
// its charset parameter, if one can be read.
func mediaType(v string) (mt, charset string, err error) {
	head, params, _ := strings.Cut(v, ";")
	mt = strings.ToLower(strings.Trim(head, " \t"))
	typ, sub, ok := strings.Cut(mt, "/")
	if !ok || !isToken(typ) || !isToken(sub) {
		return "", "", fmt.Errorf("%w: %q is not one media type", ErrContentType, v)
	}
	if _, ps, err := mime.ParseMediaType(v); err == nil {
		return mt, ps["charset"], nil
	}
	// Malformed parameters: read the charset the lenient way.
	for _, p := range strings.Split(params, ";") {
		k, val, _ := strings.Cut(p, "=")
		if strings.EqualFold(strings.Trim(k, " \t"), "charset") {
			charset = strings.Trim(val, " \t\"")
		}
	}
	return mt, charset, nil
}

// isToken reports whether s is an RFC 9110 token.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

// codings returns the content codings other than identity in the
// Content-Encoding field values, in the order they were applied.
func codings(vs []string) []string {
	var cs []string
	for _, v := range vs {
		for _, c := range strings.Split(v, ",") {
			if c = strings.Trim(c, " \t"); c != "" && !strings.EqualFold(c, "identity") {
				cs = append(cs, c)
			}
		}
	}
	return cs
}

// MaskHeader applies the header rules to h in place (callers pass a copy
// of a request's header) and returns the count per label. A rule applies
// to its header under any spelling a backend may read as that header:
// any case, and '_' for '-' (CGI and WSGI read both X-User-Phone and
// X_User_Phone as HTTP_X_USER_PHONE).
func (m *Masker) MaskHeader(h http.Header, counts map[string]int) {
	if len(m.headers) == 0 {
		return
	}
	for name, vs := range h {
		action, ok := m.headers[name]
		if !ok {
			action, ok = m.headers[headerRuleKey(name)]
		}
		if !ok {
			continue
		}
		switch action {
		case ActionDrop:
			delete(h, name)
			counts[LabelHeader]++
			continue
		case ActionMask:
			out := make([]string, len(vs))
			for i, v := range vs {
				out[i] = string(m.appendMasked(nil, []byte(v)))
			}
			h[name] = out
			counts[LabelHeader] += len(vs)
		case ActionDetect:
			var out []string
			for i, v := range vs {
				b := []byte(v)
				spans := m.findSpans(nil, b)
				if len(spans) == 0 {
					continue
				}
				if out == nil {
					out = append([]string(nil), vs...)
				}
				out[i] = string(m.maskSpans(nil, b, spans, counts))
			}
			if out != nil {
				h[name] = out
			}
		}
	}
}

// headerRuleKey is the key of m.headers a header name matches: canonical,
// with '_' read as '-'.
func headerRuleKey(name string) string {
	return http.CanonicalHeaderKey(strings.ReplaceAll(name, "_", "-"))
}

// Reader masks a body as it is read. Count is called once per label when
// the body ends (EOF or an error), with the number of masked values.
type Reader struct {
	m      *Masker
	src    io.Reader
	json   *jsonScanner
	text   *window
	codec  *codec // a compressed body's decoder and encoder, or nil
	sniff  Kind   // KindSniff or KindSniffText until the first byte that decides
	lead   int    // bytes passed on while sniffing
	bomAt  int    // of which a leading UTF-8 BOM
	counts map[string]int
	report func(label string, n int)
	in     []byte
	out    []byte
	pos    int
	err    error
	// sniffErr refuses a body without Content-Type that the masker
	// cannot read (sniffed).
	sniffErr error
	peak     int // the largest buffered bytes seen (tests)
}

const readChunk = 32 << 10

// NewReader returns a Reader that scans src as kind (KindPass returns src
// unchanged). report may be nil.
func (m *Masker) NewReader(src io.Reader, kind Kind, report func(label string, n int)) io.Reader {
	r := &Reader{m: m, src: src, report: report, counts: map[string]int{}}
	base := kind & kindBase
	switch base {
	case KindJSON, KindText:
		r.start(base)
	case KindSniff, KindSniffText:
		r.sniff = base
	default:
		return src
	}
	if coding := kind &^ kindBase; coding != 0 {
		r.codec = newCodec(src, coding)
		r.src = r.codec
	}
	return r
}

// start sets up the scanner for kind.
func (r *Reader) start(kind Kind) {
	switch kind {
	case KindJSON:
		r.json = newJSONScanner(r.m)
		r.json.counts = r.counts
	case KindText:
		r.text = &window{m: r.m, counts: r.counts}
	}
}

// asciiCompatible reports whether a body in charset spells digits, quotes
// and braces as ASCII does, so the masker reads what the backend reads. An
// allow-list: any other charset (UTF-16 and UTF-32 in all their spellings,
// "utf16", "UTF_16LE", "ucs2", "unicode", EBCDIC...) is refused on a masked
// route rather than passed unread.
func asciiCompatible(charset string) bool {
	c := strings.Map(func(r rune) rune {
		if r >= 'A' && r <= 'Z' {
			return r + 'a' - 'A'
		}
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			return r
		}
		return -1 // "UTF_8", "utf 8" and "utf-8" are one name
	}, charset)
	switch c {
	case "", "utf8", "usascii", "ascii", "iso88591", "latin1", "iso885915", "windows1252", "cp1252",
		"gbk", "gb2312", "gb18030", "big5", "shiftjis", "eucjp", "euckr":
		return true
	}
	return false
}

// sniffed passes on the leading BOM and whitespace of a body without
// Content-Type and, at its first other byte, picks the scanner: JSON for
// '{' or '[', else none (KindSniff) or text (KindSniffText). It returns
// the rest of b.
func (r *Reader) sniffed(b []byte) []byte {
	i := 0
	for ; i < len(b); i++ {
		c := b[i]
		if c == 0 || c == 0xfe || c == 0xff {
			// A UTF-16 or UTF-32 body (a BOM FE FF / FF FE, or NUL bytes
			// around ASCII): JSON parsers read it, the masker cannot.
			r.sniffErr = fmt.Errorf("%w: a body without Content-Type in UTF-16 or UTF-32", ErrContentType)
			return nil
		}
		if r.lead < 3 && r.lead == r.bomAt && c == bom[r.bomAt] {
			r.bomAt++
			r.lead++
			continue
		}
		if r.bomAt > 0 && r.bomAt < 3 || !isSpace(c) {
			break // a broken BOM, or the first byte that decides
		}
		r.lead++
	}
	r.out = append(r.out, b[:i]...)
	if i == len(b) {
		return nil
	}
	kind := KindPass
	if r.sniff == KindSniffText {
		kind = KindText
	}
	if (r.bomAt == 0 || r.bomAt == 3) && (b[i] == '{' || b[i] == '[') {
		kind = KindJSON
	}
	r.start(kind)
	if r.json != nil {
		r.json.off = int64(r.lead)
	}
	r.sniff = 0
	return b[i:]
}

func (r *Reader) Read(p []byte) (int, error) {
	for r.pos == len(r.out) {
		if r.err != nil {
			return 0, r.err
		}
		r.out, r.pos = r.out[:0], 0
		if r.in == nil {
			r.in = make([]byte, readChunk)
		}
		n, err := r.src.Read(r.in)
		var serr error
		b := r.in[:n]
		if r.sniff != 0 && n > 0 {
			b = r.sniffed(b)
			serr = r.sniffErr
		}
		if len(b) > 0 {
			switch {
			case r.json != nil:
				r.out, serr = r.json.write(r.out, b)
			case r.text != nil:
				r.out = r.text.push(r.out, b, false)
			default:
				r.out = append(r.out, b...)
			}
		}
		if err == io.EOF && serr == nil {
			switch {
			case r.json != nil:
				r.out, serr = r.json.close(r.out)
			case r.text != nil:
				r.out = r.text.push(r.out, nil, true)
			}
		}
		if r.codec != nil && serr == nil && (err == nil || err == io.EOF) {
			r.out = r.codec.encode(r.out, r.out, err == io.EOF)
		}
		r.notePeak()
		switch {
		case serr != nil:
			r.out, r.err = r.out[:0], serr // nothing more is sent
		case errors.Is(err, ErrMalformed): // a compressed body that does not decompress
			r.out, r.err = r.out[:0], err
		case err != nil:
			r.err = err
		}
		if r.err != nil {
			r.flushCounts()
		}
	}
	n := copy(p, r.out[r.pos:])
	r.pos += n
	return n, nil
}

func (r *Reader) flushCounts() {
	if r.report == nil {
		return
	}
	for label, n := range r.counts {
		r.report(label, n)
	}
	clear(r.counts)
}

// notePeak records the bytes the reader holds (buffer capacities).
func (r *Reader) notePeak() {
	n := cap(r.in) + cap(r.out)
	if s := r.json; s != nil {
		n += cap(s.tok) + cap(s.scratch) + cap(s.masked) + cap(s.pend) + cap(s.stack)*40
		if s.long != nil {
			n += cap(s.long.buf) + cap(s.long.tmp)
		}
	}
	if w := r.text; w != nil {
		n += cap(w.buf) + cap(w.tmp)
	}
	r.peak = max(r.peak, n)
}
