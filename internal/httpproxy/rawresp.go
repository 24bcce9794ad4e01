package httpproxy

import (
	"context"
	"net/http"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// Raw response headers: a plain lean response on the fast path keeps its
// field lines as the endpoint sent them (HeaderBuf), is read through
// ResponseFields, made a map only by ResponseHeader, and passed on as it
// came by WriteResponse.

// rawFields reports whether the field lines of a lean response head can
// be left raw and passed on as they came: every line as leanFields takes
// it, exactly one Content-Length (returned), and no field the proxy acts
// on as it passes (the hop-by-hop ones, Connection among them) or that
// takes a head out of the lean subset (Transfer-Encoding, Trailer,
// Pragma). Anything else is for leanFields and a map: rawFields only
// takes heads that parse takes too, with the same length and no
// Connection: close (FuzzLeanResponse holds it to that).
//
// names has bit len(name)%64 set for each field's name: Fields.Get skips
// a search for a name of a length none has.
func rawFields(s string) (length int64, names uint64, ok bool) {
	lengths := 0
	for len(s) > 0 {
		i := strings.IndexByte(s, '\n')
		if i < 1 || s[i-1] != '\r' {
			return 0, 0, false
		}
		line := s[:i-1]
		s = s[i+1:]
		colon := strings.IndexByte(line, ':')
		if colon <= 0 {
			return 0, 0, false
		}
		name, v := line[:colon], line[colon+1:]
		if !httpguts.ValidHeaderFieldName(name) || !httpguts.ValidHeaderFieldValue(v) {
			return 0, 0, false
		}
		names |= 1 << (colon % 64)
		if !rawField(name, v, &length, &lengths) {
			return 0, 0, false
		}
	}
	return length, names, lengths == 1
}

// rawFieldsOf is rawFields for the field lines fields of head, found and
// checked already by sc (nil: not).
func rawFieldsOf(head, fields string, sc *headScan) (length int64, names uint64, ok bool) {
	if sc == nil {
		return rawFields(fields)
	}
	lengths := 0
	for _, f := range sc.f[:sc.nf] {
		names |= 1 << ((f.colon - f.start) % 64)
		if !rawField(head[f.start:f.colon], head[f.colon+1:f.end], &length, &lengths) {
			return 0, 0, false
		}
	}
	return length, names, lengths == 1
}

// rawField is rawFields's judgement of one field, a valid name and value:
// a Content-Length is counted (lengths) and parsed into length.
func rawField(name, v string, length *int64, lengths *int) bool {
	if len(name) == len("Content-Length") && strings.EqualFold(name, "Content-Length") {
		*lengths++
		n, ok := parseLength(trimOWS(v))
		*length = n
		return ok && *lengths == 1
	}
	for _, r := range rawRefused {
		if len(name) == len(r) && strings.EqualFold(name, r) {
			return false
		}
	}
	return true
}

// rawRefused: the names rawFields leaves to leanFields.
var rawRefused = append([]string{"Pragma"}, hopHeaders...)

// trimOWS trims the spaces and tabs around a field value.
func trimOWS(v string) string {
	for len(v) > 0 && (v[0] == ' ' || v[0] == '\t') {
		v = v[1:]
	}
	for len(v) > 0 && (v[len(v)-1] == ' ' || v[len(v)-1] == '\t') {
		v = v[:len(v)-1]
	}
	return v
}

// rawHeaderBuf returns ctx's HeaderBuf if a lean response may be left raw
// in it: the fast path's, and no response holds it.
func rawHeaderBuf(ctx context.Context) *HeaderBuf {
	hb := headerBufOf(ctx)
	if hb == nil || hb.busy {
		return nil
	}
	return hb
}

// rawOf returns the field lines of resp if its header is still raw.
func rawOf(resp *http.Response) (string, bool) {
	if hb := rawBufOf(resp); hb != nil {
		return hb.rawFields, true
	}
	return "", false
}

// rawBufOf returns the HeaderBuf that holds resp's field lines if its
// header is still raw, else nil.
func rawBufOf(resp *http.Response) *HeaderBuf {
	if resp.Header != nil || resp.Request == nil {
		return nil
	}
	hb := headerBufOf(resp.Request.Context())
	if hb == nil || hb.raw != resp {
		return nil
	}
	return hb
}

// ResponseHeader returns resp's header, made from its field lines first if
// the pool left them raw (the fast path's lean responses): what a caller
// that changes the header, or keeps the response beyond its request,
// calls first. A response with no header gets an empty one.
func ResponseHeader(resp *http.Response) http.Header {
	if resp.Header != nil {
		return resp.Header
	}
	fields, raw := rawOf(resp)
	n := strings.Count(fields, "\n")
	h, strs := make(http.Header, n), make([]string, n)
	if raw {
		leanFields(fields, h, strs) // taken by rawFields: cannot fail
		hb := headerBufOf(resp.Request.Context())
		hb.raw, hb.rawFields = nil, ""
	}
	resp.Header = h
	return h
}

// ResponseField returns the first value of the field name (canonical) in
// resp's header, raw or not, as http.Header.Get does.
func ResponseField(resp *http.Response, name string) string {
	return ResponseFields(resp).Get(name)
}

// Fields is a response's header to read from, raw or a map: what
// ResponseFields found, for several lookups with one search of the
// request's context. A change to the header (ResponseHeader) leaves it
// stale.
type Fields struct {
	h     http.Header
	raw   string
	isRaw bool
	names uint64 // raw's names' lengths (rawFields)
}

// ResponseFields returns resp's header to read from.
func ResponseFields(resp *http.Response) Fields {
	if hb := rawBufOf(resp); hb != nil {
		return Fields{raw: hb.rawFields, isRaw: true, names: hb.rawNames}
	}
	return Fields{h: resp.Header}
}

// Get returns the first value of the field name (canonical), as
// http.Header.Get does.
func (f Fields) Get(name string) string {
	if !f.isRaw {
		return f.h.Get(name)
	}
	if f.names&(1<<(len(name)%64)) == 0 {
		return "" // no name of its length (a match is one: colon == len(name))
	}
	for s := f.raw; len(s) > 0; {
		i := strings.IndexByte(s, '\n')
		line := s[:i-1]
		s = s[i+1:]
		colon := strings.IndexByte(line, ':')
		if colon == len(name) && strings.EqualFold(line[:colon], name) {
			return trimOWS(line[colon+1:])
		}
	}
	return ""
}
