package h2meta

// NeverIndexed reports whether a header field (name in lower case) is a
// credential to send as a never-indexed literal (RFC 7541 §7.1.3): an
// HTTP/2 connection may carry the messages of many clients (an upstream
// connection of the agent's, a mesh stream many clients' requests share),
// so a credential in its HPACK table could be guessed by another of them
// from the sizes of its own header blocks (as CRIME did with TLS
// compression); and a sender that marked it never indexed lost that flag
// in http.Header, which an intermediary must keep. Which ones, as
// nghttp2's encoder chooses: authorization and proxy-authorization
// always, a cookie under 20 bytes (short enough to guess); and, in
// responses, set-cookie always (a session cookie issued to one client).
func NeverIndexed(name, value string) bool {
	switch name {
	case "authorization", "proxy-authorization", "set-cookie":
		return true
	case "cookie":
		return len(value) < 20
	}
	return false
}
