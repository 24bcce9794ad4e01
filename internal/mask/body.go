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

// Kind says how a body is scanned.
type Kind uint8

const (
	KindPass Kind = iota // not scanned
	KindJSON             // the streaming JSON scanner
	KindText             // detectors and regexes over the bytes
)

// Classify decides from the request headers how to scan its body. Bodies
// are only scanned when the Config has detectors, regexes or paths, and
// gRPC bodies (application/grpc*, binary frames) never are.
func (m *Masker) Classify(h http.Header) (Kind, error) {
	if !m.anyRule {
		return KindPass, nil
	}
	ct := h.Get("Content-Type")
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		mt = strings.ToLower(strings.TrimSpace(ct))
	}
	if strings.HasPrefix(mt, "application/grpc") {
		return KindPass, nil // length-prefixed binary frames: never rewritten
	}
	listed, star := false, false
	for _, t := range m.types {
		switch {
		case t == "*":
			star = true
		case strings.HasPrefix(t, "+"):
			listed = listed || mt != "" && strings.HasSuffix(mt, t)
		case strings.HasSuffix(t, "/*"):
			listed = listed || strings.HasPrefix(mt, t[:len(t)-1])
		default:
			listed = listed || mt == strings.ToLower(t)
		}
	}
	if !listed && !star {
		return KindPass, nil
	}
	if ce := h.Get("Content-Encoding"); ce != "" && !strings.EqualFold(ce, "identity") {
		if m.rejectCompressed {
			return KindPass, fmt.Errorf("%w: Content-Encoding %q", ErrCompressed, ce)
		}
		return KindPass, nil
	}
	if mt == "application/json" || strings.HasSuffix(mt, "+json") {
		return KindJSON, nil
	}
	return KindText, nil
}

// MaskHeader applies the header rules to h in place (callers pass a copy
// of a request's header) and returns the count per label.
func (m *Masker) MaskHeader(h http.Header, counts map[string]int) {
	for name, action := range m.headers {
		vs, ok := h[name]
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

// canonicalHeader is http.CanonicalHeaderKey.
func canonicalHeader(s string) string { return http.CanonicalHeaderKey(s) }

// Reader masks a body as it is read. Count is called once per label when
// the body ends (EOF or an error), with the number of masked values.
type Reader struct {
	src    io.Reader
	json   *jsonScanner
	text   *window
	counts map[string]int
	report func(label string, n int)
	in     []byte
	out    []byte
	pos    int
	err    error
	peak   int // the largest buffered bytes seen (tests)
}

const readChunk = 32 << 10

// NewReader returns a Reader that scans src as kind (KindPass returns src
// unchanged). report may be nil.
func (m *Masker) NewReader(src io.Reader, kind Kind, report func(label string, n int)) io.Reader {
	r := &Reader{src: src, report: report}
	switch kind {
	case KindJSON:
		r.json = newJSONScanner(m)
		r.counts = r.json.counts
	case KindText:
		r.counts = map[string]int{}
		r.text = &window{m: m, counts: r.counts}
	default:
		return src
	}
	return r
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
		if n > 0 {
			if r.json != nil {
				r.out, serr = r.json.write(r.out, r.in[:n])
			} else {
				r.out = r.text.push(r.out, r.in[:n], false)
			}
		}
		if err == io.EOF && serr == nil {
			if r.json != nil {
				r.out, serr = r.json.close(r.out)
			} else {
				r.out = r.text.push(r.out, nil, true)
			}
		}
		r.notePeak()
		switch {
		case serr != nil:
			r.out, r.err = r.out[:0], serr // nothing more is sent
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
