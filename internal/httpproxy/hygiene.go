package httpproxy

import (
	"net"
	"net/http"
	"net/http/httputil"
	"net/textproto"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/http/httpguts"
)

// The proxy's header rules, in one place for every HTTP path the agent
// has: the HTTP/1.1 fast path, the ReverseProxy path of the L7 server
// (HTTP/1.1 and h2c) and the destination side of remote requests
// (authzServer). A request leaving the proxy for an endpoint carries:
//
//   - no hop-by-hop header (RFC 9110 §7.6.1) nor any header its Connection
//     header names, except "Te: trailers";
//   - no identity or forwarding header of the client's: the agent sets
//     IdentityHeader and X-Forwarded-For/-Host/-Proto itself (Forwarded,
//     X-Forwarded-Client-Cert and Proxy are dropped);
//   - no header whose name, with '_' read as '-', is one of those above or
//     Host, Content-Length: CGI and WSGI servers map '-' and '_' to the same
//     variable (HTTP_X_FOGMESH_SOURCE_ID), so X_Fogmesh_Source_Id would
//     otherwise pass as the identity the agent vouches for. They are
//     dropped, as Envoy's headers_with_underscores_action: DROP_HEADER does
//     for all names with '_' (the others are left alone: they cannot alias
//     what the agent sets);
//   - no request trailer values at all (Pool's writeRequest ends a
//     chunked body without them; ReverseProxy keeps only the declared
//     names); ScrubTrailer remains a safeguard for the names a request's
//     copies (mirrors) keep.

// hopHeaders are removed from requests and responses, as ReverseProxy does.
var hopHeaders = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// IdentityHeader carries the identity of the client, which the proxy
// vouches for: a client's own copy never passes, in any spelling.
const IdentityHeader = "X-Fogmesh-Source-Id"

// agentHeaders are the headers only the agent may set on a forwarded
// request: a client's copy is dropped, whatever its spelling. Two the
// agent never sets are dropped with them: X-Forwarded-Client-Cert (a
// proxy's word for the client's certificate, which an Istio-minded
// workload trusts; Envoy sanitizes a client's) and Proxy (httpoxy: CGI
// servers read it as HTTP_PROXY, the outbound proxy).
var agentHeaders = []string{IdentityHeader, "Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto",
	"X-Forwarded-Client-Cert", "Proxy"}

// protectedHeaders are all names that a client may not send under another
// spelling ('_' for '-'): the agent's own, the hop-by-hop ones and those
// that frame or route the request.
var protectedHeaders = append(append([]string{"Host", "Content-Length"}, hopHeaders...), agentHeaders...)

var xfProto = []string{"http"}

// EqualFoldDash reports whether name equals canon ignoring ASCII case,
// reading '_' in name as '-'.
func EqualFoldDash(name, canon string) bool {
	if len(name) != len(canon) {
		return false
	}
	for i := 0; i < len(name); i++ {
		a, b := name[i], canon[i]
		if a == '_' {
			a = '-'
		}
		if 'A' <= a && a <= 'Z' {
			a += 'a' - 'A'
		}
		if 'A' <= b && b <= 'Z' {
			b += 'a' - 'A'
		}
		if a != b {
			return false
		}
	}
	return true
}

// isAgentHeader reports whether name is an agent header in any spelling.
func isAgentHeader(name string) bool {
	for _, h := range agentHeaders {
		if EqualFoldDash(name, h) {
			return true
		}
	}
	return false
}

// isAliasOfProtected reports whether name is a protected header spelled
// with '_'.
func isAliasOfProtected(name string) bool {
	if strings.IndexByte(name, '_') < 0 {
		return false
	}
	for _, h := range protectedHeaders {
		if EqualFoldDash(name, h) {
			return true
		}
	}
	return false
}

// ScrubRequestHeader applies the rules above to h, the header of a request
// about to be forwarded, which the caller owns. connection is the client's
// Connection header (it names more hop-by-hop headers). The caller then
// sets the forwarding and identity headers (SetXForwarded,
// Agent.setSourceIdentity). No allocation.
func ScrubRequestHeader(h http.Header, connection []string) {
	for _, f := range connection {
		for sf := range strings.SplitSeq(f, ",") {
			if sf = textproto.TrimString(sf); sf != "" {
				h.Del(sf)
			}
		}
	}
	trailers := headerHasToken(h["Te"], "trailers")
	for k := range h {
		if scrubsName(k) {
			delete(h, k)
		}
	}
	if trailers {
		h["Te"] = teTrailers
	}
}

var teTrailers = []string{"trailers"}

// scrubsName reports whether ScrubRequestHeader deletes a field of this
// name whatever the Connection header says. A header with no such name
// has no Connection or Te field either (hop-by-hop): ScrubRequestHeader
// leaves it as it is (HeaderBuf.HeaderClean).
func scrubsName(k string) bool { return isHop(k) || isAgentHeader(k) || isAliasOfProtected(k) }

// scrubsCanonical is scrubsName for a name that is a valid field name in
// its canonical form (textproto.CanonicalMIMEHeaderKey's, as the lean
// parse keys its header): ASCII, so the hop-by-hop and agent names it can
// fold equal to are their canonical spellings, compared whole; a name with
// '_' (an alias, or none) is left to scrubsName. TestScrubsCanonical
// holds the list to hopHeaders and agentHeaders.
func scrubsCanonical(k string) bool {
	switch k {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Trailer",
		"Transfer-Encoding", "Upgrade", IdentityHeader, "Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto",
		"X-Forwarded-Client-Cert", "Proxy":
		return true
	}
	return strings.IndexByte(k, '_') >= 0 && scrubsName(k)
}

func isHop(name string) bool {
	// An ASCII name can fold equal only to a header of its length (every
	// request's names are: they are tokens), so most of the nine
	// comparisons are skipped; strings.EqualFold's Unicode folds (U+212A
	// KELVIN SIGN is 'k') let other names match longer or shorter ones.
	ascii := true
	for i := 0; i < len(name); i++ {
		if name[i] >= utf8.RuneSelf {
			ascii = false
			break
		}
	}
	for _, h := range hopHeaders {
		if (!ascii || len(name) == len(h)) && strings.EqualFold(name, h) {
			return true
		}
	}
	return false
}

// RemoveHopByHop deletes the hop-by-hop headers of a response and those
// named in its Connection header.
func RemoveHopByHop(h http.Header) {
	for _, f := range h["Connection"] {
		for sf := range strings.SplitSeq(f, ",") {
			if sf = textproto.TrimString(sf); sf != "" {
				h.Del(sf)
			}
		}
	}
	for _, k := range hopHeaders {
		delete(h, k)
	}
}

// SetXForwarded sets the forwarding headers of a request the agent
// forwards for a client (as ReverseProxy's SetXForwarded): clientIP (nil
// if unknown) and the Host the client asked for.
func SetXForwarded(h http.Header, clientIP []string, host string) {
	SetXForwardedValues(h, clientIP, []string{host})
}

// SetXForwardedValues is SetXForwarded with the host as the header's value
// slice, which the caller may share between requests (the fast path keeps
// one per client connection): neither slice is modified.
func SetXForwardedValues(h http.Header, clientIP, host []string) {
	if clientIP != nil {
		h["X-Forwarded-For"] = clientIP
	}
	h["X-Forwarded-Host"] = host
	h["X-Forwarded-Proto"] = xfProto
}

// ScrubProxyRequest is ScrubRequestHeader and ScrubTrailer for the
// outgoing request of a ReverseProxy (run from its Rewrite). ReverseProxy
// has put back "Connection: Upgrade" and Upgrade for an upgrade it
// handles itself: those stay.
//
// An upgrade to h2c is not passed on (Envoy's default too): after the
// switch the client would speak HTTP/2 straight to the workload, each of
// its requests with whatever path and identity header it likes, past the
// agent's per-request routing, normalisation and authorization. The request
// goes on as plain HTTP/1.1; a workload that switches anyway gets a 502.
func ScrubProxyRequest(pr *httputil.ProxyRequest) {
	upgrade := pr.Out.Header["Upgrade"]
	ScrubRequestHeader(pr.Out.Header, pr.In.Header["Connection"])
	if upgrade != nil && !upgradesToHTTP(upgrade) {
		pr.Out.Header["Connection"] = []string{"Upgrade"}
		pr.Out.Header["Upgrade"] = upgrade
	}
	delete(pr.Out.Header, "Http2-Settings")
	ScrubTrailer(pr.Out.Trailer)
}

// RemoteIP is the X-Forwarded-For value of a client address (nil if it
// has no IP).
func RemoteIP(addr string) []string {
	return RemoteIPIn(new([1]string), addr)
}

// RemoteIPIn is RemoteIP in the caller's storage.
func RemoteIPIn(dst *[1]string, addr string) []string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil
	}
	dst[0] = host
	return dst[:]
}

// trailerForbidden are fields a trailer must not carry (RFC 9110 §6.5.1:
// framing, routing, authentication, request modifiers, content
// processing), the list net/http refuses to send as trailers.
var trailerForbidden = []string{"Authorization", "Cache-Control", "Content-Encoding", "Content-Length",
	"Content-Range", "Content-Type", "Expect", "Host", "Max-Forwards", "Pragma", "Range", "Realm",
	"Www-Authenticate", "Set-Cookie", "Cookie"}

// ScrubTrailer removes from a request's trailer (declared or received)
// every field ScrubRequestHeader would remove from its header, those a
// trailer must not carry, and those with an invalid name or value: a
// workload that merges trailers into the header must not get an identity,
// a Host or a framing field from them.
func ScrubTrailer(t http.Header) {
	for k, vv := range t {
		if !httpguts.ValidHeaderFieldName(k) || isHop(k) || isAgentHeader(k) || isAliasOfProtected(k) || isTrailerForbidden(k) {
			delete(t, k)
			continue
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				delete(t, k)
				break
			}
		}
	}
}

func isTrailerForbidden(name string) bool {
	for _, h := range trailerForbidden {
		if EqualFoldDash(name, h) {
			return true
		}
	}
	return false
}

// DropIdentityHeaders removes every spelling of IdentityHeader, before the
// destination agent sets the identity it vouched for.
func DropIdentityHeaders(h http.Header) {
	for k := range h {
		if EqualFoldDash(k, IdentityHeader) {
			delete(h, k)
		}
	}
}

// DropForwardedHeaders removes Forwarded and X-Forwarded-* in any
// spelling (case, '_' for '-') from a request a client wrote.
func DropForwardedHeaders(h http.Header) {
	for k := range h {
		if EqualFoldDash(k, "Forwarded") || (len(k) > len("X-Forwarded-") && EqualFoldDash(k[:len("X-Forwarded-")], "X-Forwarded-")) {
			delete(h, k)
		}
	}
}

// upgradesToHTTP reports whether an Upgrade header asks for another HTTP
// version (h2c, h2, HTTP/2.0): a tunnel of requests the agent would not see.
func upgradesToHTTP(vv []string) bool {
	for _, v := range vv {
		for tok := range strings.SplitSeq(v, ",") {
			tok = strings.ToLower(strings.TrimSpace(tok))
			if strings.HasPrefix(tok, "h2") || strings.HasPrefix(tok, "http/") {
				return true
			}
		}
	}
	return false
}

// headerHasToken reports whether a comma-separated header lists token.
func headerHasToken(vv []string, token string) bool {
	for _, v := range vv {
		for sf := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(textproto.TrimString(sf), token) {
				return true
			}
		}
	}
	return false
}
