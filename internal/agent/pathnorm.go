package agent

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"

	"github.com/fogmesh/fogmesh/internal/pathnorm"
)

// Every HTTP request is normalised once, where it enters the agent (the
// HTTP/1.1 fast path, the net/http server for h2c and what the fast path
// hands over, and the destination agent's server for mesh streams), before
// anything looks at its path: route rules, authorization and the request
// line sent upstream then all see the one normalised path
// (Config.PathNormalization, Istio's options; internal/pathnorm). The
// destination agent normalises again with its own option: a path an agent
// normalised is a fixed point of the same or a weaker option, so it
// changes nothing unless the destination's option is stronger.

// errMethodCase: Istio refuses a method that is not upper case, so that a
// DENY on DELETE cannot be walked around with "delete" to a workload that
// does not care about case.
var errMethodCase = errors.New("method is not upper case")

// normalizeRequest rewrites req.URL's path to its normalised form, from
// the request target as received (req.RequestURI), or returns why the
// request cannot be normalised (to be answered 400): a path that cannot
// (pathnorm), a method with lower-case letters. The query is left as it is.
func (a *Agent) normalizeRequest(req *http.Request) error {
	for i := 0; i < len(req.Method); i++ {
		if c := req.Method[i]; 'a' <= c && c <= 'z' {
			return errMethodCase
		}
	}
	target := req.RequestURI
	if target == "" { // not a server request: the URL is all there is
		target = req.URL.RequestURI()
	}
	p, _, err := pathnorm.SplitTarget(target)
	if err != nil {
		return fmt.Errorf("bad request target: %w", err)
	}
	if p == "*" { // OPTIONS *: no path
		return nil
	}
	n, err := pathnorm.Normalize(p, a.cfg.PathNormalization)
	if err != nil {
		return fmt.Errorf("bad request path: %w", err)
	}
	if n == p && req.URL.Opaque == "" && req.URL.EscapedPath() == n {
		return nil // unchanged, and net/url sends it as it is
	}
	dec, err := url.PathUnescape(n)
	if err != nil { // cannot be: Normalize checked every escape
		return fmt.Errorf("normalised path %q: %w", n, err)
	}
	req.URL.Opaque, req.URL.Path, req.URL.RawPath = "", dec, n
	return nil
}

// authzPath is the path an authorization rule matches: the normalised
// path in its percent-encoded form, as Istio matches the :path header. An
// escaped slash stays "%2F" there, so "/public%2F..%2Fadmin" never
// matches "/public/*".
func authzPath(req *http.Request) string { return req.URL.EscapedPath() }

// normalizingHandler answers 400 to a request that cannot be normalised
// and passes the others on, normalised.
func (a *Agent) normalizingHandler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := a.normalizeRequest(r); err != nil {
			http.Error(w, "fogmesh: "+err.Error(), http.StatusBadRequest)
			return
		}
		next.ServeHTTP(w, r)
	})
}
