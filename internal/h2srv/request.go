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
	method, scheme := f.PseudoValue("method"), f.PseudoValue("scheme")
	authority, path := f.PseudoValue("authority"), f.PseudoValue("path")
	if f.PseudoValue("protocol") != "" {
		return nil, false, errMalformed("extended CONNECT (:protocol) is not supported") // as x/net by default
	}
	if method == "CONNECT" {
		if path != "" || scheme != "" || authority == "" {
			return nil, false, errMalformed("CONNECT with :path or :scheme, or without :authority")
		}
	} else if method == "" || path == "" || (scheme != "https" && scheme != "http") {
		return nil, false, errMalformed("missing :method or :path, or :scheme not http(s)")
	}
	regular := f.RegularFields()
	header := make(http.Header, len(regular))
	// A key's first value is a slice of vals (capacity 1: an append
	// copies): one allocation for the values instead of one per key.
	var vals []string
	if len(regular) <= len(spare) {
		vals = spare[:len(regular)]
	} else {
		vals = make([]string, len(regular))
	}
	for i, hf := range regular {
		k := canon(hf.Name)
		if vv, ok := header[k]; ok {
			header[k] = append(vv, hf.Value)
			continue
		}
		vals[i] = hf.Value
		header[k] = vals[i : i+1 : i+1]
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
		if u, err = url.ParseRequestURI(path); err != nil {
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
	if err := checkConnHeaders(header); err != nil {
		return req, false, &errBadRequest{http.StatusBadRequest, err.Error()}
	}
	return req, needsContinue, nil
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
