package h2up

import (
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2/hpack"

	"github.com/fogmesh/fogmesh/internal/h2meta"
)

func hpackField(name, value string) hpack.HeaderField {
	return hpack.HeaderField{Name: name, Value: value}
}

// headerField is a request's field name (lower case) and value for the
// encoder: credentials never indexed (h2meta.NeverIndexed says which and
// why).
func headerField(name, value string) hpack.HeaderField {
	return hpack.HeaderField{Name: name, Value: value, Sensitive: h2meta.NeverIndexed(name, value)}
}

// writeCookieCrumbs writes a Cookie value one cookie-pair a field (RFC
// 9113 §8.2.3), as net/http's transport does: so headerField judges each
// pair, and a short one (a session ID beside a long, guessable preference)
// is never indexed, where the whole line, 20 bytes or more, would be with
// it. The spaces after each ';' go, as net/http's go.
func writeCookieCrumbs(e *h2meta.Encoder, v string) {
	for {
		p := strings.IndexByte(v, ';')
		if p < 0 {
			break
		}
		e.WriteField(headerField("cookie", v[:p]))
		p++
		for p < len(v) && v[p] == ' ' {
			p++
		}
		v = v[p:]
	}
	if len(v) > 0 {
		e.WriteField(headerField("cookie", v))
	}
}

// encodeHeaders encodes the request's header block into c.hbuf (under
// wmu), as net/http's transport does: pseudo-headers first, then the
// fields without the connection-specific ones (RFC 9113 §8.2.2), TE only
// as "trailers", no User-Agent when it is empty (ReverseProxy's way of
// asking for none), and content-length when the body's length is known.
func encodeHeaders(c *conn, req *http.Request, hasBody, hasTrailer bool) {
	e := c.henc
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	if h, err := httpguts.PunycodeHostPort(host); err == nil {
		host = h
	}
	method := req.Method
	if method == "" {
		method = http.MethodGet
	}
	path := req.URL.RequestURI()
	if req.URL.Opaque == "" && req.URL.Path == "*" && method == http.MethodOptions {
		path = "*"
	}
	e.WriteField(hpackField(":authority", host))
	e.WriteField(hpackField(":method", method))
	e.WriteField(hpackField(":path", path))
	scheme := req.URL.Scheme
	if scheme == "" {
		scheme = "http"
	}
	e.WriteField(hpackField(":scheme", scheme))
	for k, vv := range req.Header {
		switch k {
		case "Host", "Connection", "Proxy-Connection", "Transfer-Encoding", "Upgrade", "Keep-Alive", "Content-Length", "Trailer":
			continue
		case "Te":
			for _, v := range vv {
				if httpguts.HeaderValuesContainsToken([]string{v}, "trailers") {
					e.WriteField(hpackField("te", "trailers"))
					break
				}
			}
			continue
		case "User-Agent":
			if len(vv) == 0 || vv[0] == "" {
				continue
			}
			vv = vv[:1]
		}
		lk := lowerHeader(k)
		if lk == "cookie" {
			for _, v := range vv {
				writeCookieCrumbs(e, v)
			}
			continue
		}
		for _, v := range vv {
			e.WriteField(headerField(lk, v))
		}
	}
	if hasTrailer {
		keys := make([]string, 0, len(req.Trailer))
		for k := range req.Trailer {
			keys = append(keys, lowerHeader(k))
		}
		e.WriteField(hpackField("trailer", strings.Join(keys, ",")))
	}
	cl := int64(0)
	if hasBody {
		cl = req.ContentLength
		if cl == 0 {
			cl = -1
		}
	}
	if cl > 0 || cl == 0 && (method == http.MethodPost || method == http.MethodPut || method == http.MethodPatch) {
		e.WriteField(hpackField("content-length", strconv.FormatInt(cl, 10)))
	}
}

// lowerHeader is the HTTP/2 name of a header: lower case.
func lowerHeader(k string) string {
	if v, ok := commonLower[k]; ok {
		return v
	}
	return strings.ToLower(k)
}

var commonLower = func() map[string]string {
	m := map[string]string{}
	for _, k := range []string{"Accept", "Accept-Charset", "Accept-Encoding", "Accept-Language", "Authorization",
		"Cache-Control", "Content-Encoding", "Content-Length", "Content-Type", "Cookie", "Date", "Etag",
		"Grpc-Accept-Encoding", "Grpc-Encoding", "Grpc-Message", "Grpc-Status", "Grpc-Timeout", "Host",
		"If-Modified-Since", "If-None-Match", "Last-Modified", "Location", "Origin", "Referer", "Server",
		"Set-Cookie", "Te", "Trailer", "User-Agent", "Vary", "Via", "X-Forwarded-For", "X-Forwarded-Host",
		"X-Forwarded-Proto", "X-Request-Id",
		"X-Fogmesh-Source-Id", // the agent's identity header (httpproxy.IdentityHeader), on every request it forwards
	} {
		m[k] = strings.ToLower(k)
	}
	return m
}()

// statusText is ":status" with its reason phrase, as http.Response.Status.
func statusText(code int) string {
	switch code {
	case http.StatusOK:
		return "200 OK"
	case http.StatusNoContent:
		return "204 No Content"
	case http.StatusNotFound:
		return "404 Not Found"
	}
	return strconv.Itoa(code) + " " + http.StatusText(code)
}

// checkRequest refuses what cannot be sent as HTTP/2, as net/http's
// transport does.
func checkRequest(req *http.Request) error {
	if req.URL == nil {
		return errors.New("h2up: request without URL")
	}
	if req.Method == http.MethodConnect {
		return errors.New("h2up: CONNECT is not supported")
	}
	if req.Method != "" && !httpguts.ValidHeaderFieldName(req.Method) { // a token
		return fmt.Errorf("h2up: invalid method %q", req.Method)
	}
	if v := req.Header["Upgrade"]; len(v) > 0 {
		return fmt.Errorf("h2up: invalid Upgrade request header: %q", v)
	}
	if v := req.Header["Transfer-Encoding"]; len(v) > 0 && (len(v) > 1 || v[0] != "chunked") {
		return fmt.Errorf("h2up: invalid Transfer-Encoding request header: %q", v)
	}
	for _, h := range []http.Header{req.Header, req.Trailer} {
		for k, vv := range h {
			if !httpguts.ValidHeaderFieldName(k) {
				return fmt.Errorf("h2up: invalid header field name %q", k)
			}
			for _, v := range vv {
				if !httpguts.ValidHeaderFieldValue(v) {
					return fmt.Errorf("h2up: invalid header field value for %q", k)
				}
			}
		}
	}
	return nil
}

// canonical is the canonical form of a header name (lower case on the
// wire), cached per connection: CanonicalMIMEHeaderKey allocates a new
// string for every lower-case name. Read loop only.
func (c *conn) canonical(name string) string {
	if k, ok := c.canon[name]; ok {
		return k
	}
	k := textproto.CanonicalMIMEHeaderKey(name)
	if c.canon == nil {
		c.canon = map[string]string{}
	}
	if len(c.canon) < 64 {
		c.canon[name] = k
	}
	return k
}
