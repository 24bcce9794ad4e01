package h2srv

import (
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
)

// Request validation, the rules of golang.org/x/net/http2's server
// (newWriterAndRequest, httpcommon.NewServerRequest and
// checkValidHTTP2RequestHeaders): the agent must accept no request head
// that server refuses (FuzzRequestDifferential holds it to that), for what
// it accepts it normalises, authorizes and forwards.

// errMalformed is a request head refused with RST_STREAM(PROTOCOL_ERROR).
type errMalformed string

func (e errMalformed) Error() string { return "h2srv: malformed request: " + string(e) }

// errBadRequest is a request head answered 400 (or 431), as the x/net
// server answers it: the stream is valid, the request is not.
type errBadRequest struct {
	code int
	msg  string
}

func (e *errBadRequest) Error() string { return e.msg }

// connHeaders are connection-specific header fields, not allowed in HTTP/2
// (RFC 9113 §8.2.2).
var connHeaders = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Upgrade"}

// newRequest builds the request of a HEADERS block (Framer.ReadMetaHeaders
// already refused invalid field names and values, unknown, repeated and
// misplaced pseudo-headers). A *errBadRequest comes with a request (the
// handler's answer is a 400); an errMalformed without.
// A header of at most len(spare) fields keeps its values in spare.
func newRequest(f *http2.MetaHeadersFrame, canon func(string) string, spare []string) (req *http.Request, needsContinue bool, err error) {
	// The pseudo-header fields in one pass (PseudoValue walks them once
	// per name): the Framer refused repeated and unknown ones.
	var method, scheme, authority, path string
	n := 0
	for _, hf := range f.Fields {
		if !hf.IsPseudo() {
			break
		}
		n++
		switch hf.Name {
		case ":method":
			method = hf.Value
		case ":scheme":
			scheme = hf.Value
		case ":authority":
			authority = hf.Value
		case ":path":
			path = hf.Value
		case ":protocol":
			if hf.Value != "" {
				return nil, false, errMalformed("extended CONNECT (:protocol) is not supported") // as x/net by default
			}
		}
	}
	if method == "CONNECT" {
		if path != "" || scheme != "" || authority == "" {
			return nil, false, errMalformed("CONNECT with :path or :scheme, or without :authority")
		}
	} else if method == "" || path == "" || (scheme != "https" && scheme != "http") {
		return nil, false, errMalformed("missing :method or :path, or :scheme not http(s)")
	}
	regular := f.Fields[n:]
	header := make(http.Header, len(regular))
	// A key's first value is a slice of vals (capacity 1: an append
	// copies): one allocation for the values instead of one per key.
	var vals []string
	if len(regular) <= len(spare) {
		vals = spare[:len(regular)]
	} else {
		vals = make([]string, len(regular))
	}
	// special: a field was seen that the checks below look up (most
	// requests have none: their lookups are skipped).
	special := false
	for i, hf := range regular {
		k := canon(hf.Name)
		if vv, ok := header[k]; ok {
			header[k] = append(vv, hf.Value)
			continue
		}
		vals[i] = hf.Value
		header[k] = vals[i : i+1 : i+1]
		special = special || specialHeader(k)
	}
	if !special {
		// No Host, Expect, Cookie, Trailer, connection-specific or TE
		// field: what the lookups below would find is known.
		return finishRequest(f, method, scheme, authority, path, header, nil)
	}
	if authority == "" {
		authority = header.Get("Host")
	}
	if httpguts.HeaderValuesContainsToken(header["Expect"], "100-continue") {
		needsContinue = true // the body's first read asks for it
		delete(header, "Expect")
	}
	if cookies := header["Cookie"]; len(cookies) > 1 {
		header["Cookie"] = []string{strings.Join(cookies, "; ")}
	}
	var trailer http.Header
	for _, v := range header["Trailer"] {
		for _, key := range strings.Split(v, ",") {
			key = textproto.CanonicalMIMEHeaderKey(textproto.TrimString(key))
			switch key {
			case "Transfer-Encoding", "Trailer", "Content-Length":
			default:
				if trailer == nil {
					trailer = http.Header{}
				}
				trailer[key] = nil
			}
		}
	}
	delete(header, "Trailer")
	if host := header["Host"]; len(host) == 1 {
		if authority == "" {
			authority = host[0]
		} else if host[0] != authority {
			return nil, false, errMalformed("Host differs from :authority")
		}
		delete(header, "Host")
	} else if len(host) > 1 {
		return nil, false, errMalformed("more than one Host")
	}
	req, _, err = finishRequest(f, method, scheme, authority, path, header, trailer)
	if err == nil {
		if err := checkConnHeaders(header); err != nil {
			return req, false, &errBadRequest{http.StatusBadRequest, err.Error()}
		}
	}
	return req, needsContinue && err == nil, err
}

// specialHeader: newRequest looks a field of this canonical name up after
// the header is built.
func specialHeader(k string) bool {
	switch k {
	case "Host", "Expect", "Cookie", "Trailer", "Te",
		"Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Upgrade":
		return true
	}
	return false
}

// finishRequest is newRequest's rest once the header's fields are
// checked: the authority's and the path's checks, the request, the
// truncation's answer (before checkConnHeaders', which the caller makes
// when the header has a field it looks for).
func finishRequest(f *http2.MetaHeadersFrame, method, scheme, authority, path string, header, trailer http.Header) (req *http.Request, needsContinue bool, err error) {
	if strings.IndexByte(authority, '@') >= 0 && (scheme == "http" || scheme == "https") {
		return nil, false, errMalformed("userinfo in :authority")
	}
	if authority != "" && !httpguts.ValidHostHeader(authority) {
		return nil, false, errMalformed("invalid :authority")
	}
	var u *url.URL
	var requestURI string
	if method == "CONNECT" {
		u, requestURI = &url.URL{Host: authority}, authority
	} else {
		if path[0] != '/' && path != "*" {
			return nil, false, errMalformed("bad :path")
		}
		if plainPath(path) {
			u = &url.URL{Path: path} // what ParseRequestURI makes of it, without its parse
		} else if u, err = url.ParseRequestURI(path); err != nil {
			return nil, false, errMalformed("bad :path")
		}
		requestURI = path
	}
	req = &http.Request{
		Method:     method,
		URL:        u,
		Header:     header,
		RequestURI: requestURI,
		Proto:      "HTTP/2.0",
		ProtoMajor: 2,
		Host:       authority,
		Trailer:    trailer,
		Body:       http.NoBody,
	}
	if !f.StreamEnded() {
		req.ContentLength = -1
		if vv, ok := header["Content-Length"]; ok {
			req.ContentLength = 0
			if cl, err := strconv.ParseUint(vv[0], 10, 63); err == nil {
				req.ContentLength = int64(cl)
			}
		}
	}
	if f.Truncated {
		return req, false, &errBadRequest{http.StatusRequestHeaderFieldsTooLarge, "request header list too large"}
	}
	return req, false, nil
}

// plainPath: p begins with '/' and has only letters, digits and
// "/-._~": url.ParseRequestURI gives it as the URL's Path and nothing else
// (no query, escape, fragment or authority; its escaped form is itself,
// so no RawPath), TestPlainPath holds it to that.
func plainPath(p string) bool {
	if len(p) == 0 || p[0] != '/' || len(p) > 1 && p[1] == '/' {
		return false
	}
	for i := 1; i < len(p); i++ {
		c := p[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '/' || c == '-' || c == '.' || c == '_' || c == '~') {
			return false
		}
	}
	return true
}

func checkConnHeaders(h http.Header) error {
	for _, k := range connHeaders {
		if _, ok := h[k]; ok {
			return fmt.Errorf("request header %q is not valid in HTTP/2", k)
		}
	}
	if te := h["Te"]; len(te) > 0 && (len(te) > 1 || (te[0] != "trailers" && te[0] != "")) {
		return errors.New(`request header "TE" may only be "trailers" in HTTP/2`)
	}
	return nil
}
