package agent

import (
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"strings"
	"sync/atomic"

	"github.com/fogmesh/fogmesh/internal/h2srv"
	"github.com/fogmesh/fogmesh/internal/httpproxy"
)

// The HTTP/2 forwarder: what ReverseProxy.ServeHTTP does for a request of
// the agent's HTTP/2 server (h2srv) to an h2c or gRPC port, without its
// per-request copies. ReverseProxy clones the request (the Request, its
// URL and its header map), puts an httptrace in its context (for 1xx
// answers, which h2up never passes up), removes hop-by-hop headers that an
// HTTP/2 request cannot carry, and flushes a streaming response's header
// from a timer's goroutine; that was about a fifth of the agent's CPU per
// h2c request (BENCHMARKS.md, issue 14). h2srv makes a new request per
// stream and nothing reads it after the handler, so it is rewritten in
// place, with the same rules (httpproxy.ScrubRequestHeader, the
// X-Forwarded headers, the source identity) as the Rewrite of newL7.
//
// Requests this does not cover as ReverseProxy would go to ReverseProxy
// (forwardH2Eligible): a Connection or Upgrade header, declared request
// trailers, a query ReverseProxy would re-encode, and any port whose
// endpoints speak HTTP/1.1 (their transport may pass 1xx answers up).

// forwardH2Eligible reports whether forwardH2 serves r exactly as
// ReverseProxy would.
func forwardH2Eligible(r *http.Request, t listenTarget) bool {
	if r.ProtoMajor != 2 || t.proto == "http" || r.Trailer != nil || r.Header == nil {
		return false
	}
	if _, ok := r.Header["Connection"]; ok {
		return false
	}
	if _, ok := r.Header["Upgrade"]; ok {
		return false
	}
	return cleanQuery(r.URL.RawQuery)
}

// cleanQuery reports whether ReverseProxy leaves a raw query as it is
// (its cleanQueryParams): no ';', only valid percent escapes, not more
// parameters than url.ParseQuery takes, and no GODEBUG that changes that.
func cleanQuery(s string) bool {
	if s == "" {
		return true
	}
	if godebugQuery || strings.Count(s, "&") >= 1000 {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case ';':
			return false
		case '%':
			if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
				return false
			}
		}
	}
	return true
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// godebugQuery: a GODEBUG urlmaxqueryparams setting makes ReverseProxy
// re-encode every query; such a process leaves queries to ReverseProxy.
var godebugQuery = strings.Contains(os.Getenv("GODEBUG"), "urlmaxqueryparams")

// emptyUA is ReverseProxy's User-Agent for a request without one: none is
// sent (and no Go default). Read-only.
var emptyUA = []string{""}

// forwardH2 proxies in (a request of h2srv, forwardH2Eligible) through
// transport and writes the response to rw, as ReverseProxy with newL7's
// Rewrite does.
func (s *l7) forwardH2(rw http.ResponseWriter, in *http.Request, t listenTarget, transport http.RoundTripper) {
	out, call, nc := s.rewriteH2(in, t)
	if s.startH2(rw, in, out, transport, call, nc) {
		return // the response is finished when it comes (l7h2async.go)
	}
	h2srv.WillWait(rw) // the round trip waits (l7h2wait.go)
	if nc != nil {
		defer nc.Close()
	}
	res, err := transport.RoundTrip(out)
	if s.respondH2(rw, in, out, res, err) {
		// The response is cut: the stream is reset (h2srv answers
		// ErrAbortHandler with RST_STREAM), not ended as if complete.
		panic(http.ErrAbortHandler)
	}
}

// rewriteH2 makes in the request sent on (in itself: see above), and
// returns the h2Call it found (nil: none) and the body's shield from the
// transport's Close (nil: no body), which the caller closes once the
// handler is done with the request.
func (s *l7) rewriteH2(in *http.Request, t listenTarget) (*http.Request, *h2Call, *noopCloseBody) {
	// The request sent on: in itself (see above).
	out := in
	// What this adds per request lives in the handler's h2Call (one
	// allocation) when there is one: a first forward of the request.
	call, _ := in.Context().Value(h2CallKey{}).(*h2Call)
	if call != nil && call.forwarding {
		call = nil
	} else if call != nil {
		call.forwarding = true
	}
	if out.ContentLength == 0 {
		out.Body = nil // Issue 16036, as ReverseProxy
	}
	var ncOut *noopCloseBody
	if out.Body != nil {
		// As ReverseProxy: the transport's Close does not reach the
		// server's body, and no read follows the handler's return.
		var nc *noopCloseBody
		if call != nil {
			nc = &call.nc
			nc.r = out.Body
		} else {
			nc = &noopCloseBody{r: out.Body}
		}
		out.Body = nc
		ncOut = nc
	}
	out.Close = false
	h := out.Header
	httpproxy.ScrubRequestHeader(h, nil) // no Connection header (forwardH2Eligible)
	delete(h, "Http2-Settings")
	out.URL.Scheme = "http"
	out.URL.Host = in.Host
	if in.Host == "" {
		out.URL.Host = t.svc[strings.IndexByte(t.svc, '/')+1:]
	}
	if call != nil {
		call.xfHost[0] = in.Host
		httpproxy.SetXForwardedValues(h, httpproxy.RemoteIPIn(&call.xfFor, in.RemoteAddr), call.xfHost[:])
	} else {
		httpproxy.SetXForwarded(h, httpproxy.RemoteIP(in.RemoteAddr), in.Host)
	}
	if call != nil {
		s.a.setSourceIdentityIn(in.Context(), out, &call.srcID)
	} else {
		s.a.setSourceIdentity(in.Context(), out)
	}
	if _, ok := h["User-Agent"]; !ok {
		h["User-Agent"] = emptyUA
	}
	return out, call, ncOut
}

// respondH2 writes the response to rw (or err's answer), as ReverseProxy
// does; true: the response was cut (its body's copy failed) and the
// stream must be reset.
func (s *l7) respondH2(rw http.ResponseWriter, in, out *http.Request, res *http.Response, err error) (cut bool) {
	if err != nil {
		s.errorHandler(rw, out, err)
		return false
	}
	if res.StatusCode == http.StatusSwitchingProtocols {
		// No upgrade was asked for (forwardH2Eligible): as ReverseProxy's
		// handleUpgradeResponse answers an unasked one.
		res.Body.Close()
		s.errorHandler(rw, out, fmt.Errorf("backend tried to switch protocol %q when %q was requested", res.Header.Get("Upgrade"), ""))
		return false
	}
	httpproxy.RemoveHopByHop(res.Header)
	dst := rw.Header()
	for k, vv := range res.Header {
		if len(dst[k]) == 0 {
			dst[k] = vv // the response is ours: its slices need no copy
		} else {
			dst[k] = append(dst[k], vv...)
		}
	}
	announced := len(res.Trailer)
	if announced > 0 {
		var arr [4]string // on the stack for a few keys (gRPC's two)
		keys := arr[:0]
		for k := range res.Trailer {
			keys = append(keys, k)
		}
		dst.Add("Trailer", strings.Join(keys, ", "))
	}
	rw.WriteHeader(res.StatusCode)

	// ReverseProxy's flush interval: a streaming response (no length,
	// or server-sent events) is flushed at once and after every write
	// (newL7's lazyFlushWriter skips that once the upstream ended); any
	// other is left to the server.
	streaming := res.ContentLength == -1 || isEventStream(res.Header["Content-Type"])
	if streaming {
		flushWriter(rw)
	}
	buf := httpproxy.CopyBuffers.Get()
	err = copyFlushing(rw, res.Body, buf, streaming)
	httpproxy.CopyBuffers.Put(buf)
	if err != nil {
		res.Body.Close()
		// The response is cut: the stream is reset (h2srv answers
		// ErrAbortHandler with RST_STREAM), not ended as if complete.
		s.a.log.Debug("agent: h2 response body copy failed", "host", in.Host, "err", err)
		return true
	}
	res.Body.Close() // now, to populate res.Trailer
	if len(res.Trailer) > 0 {
		flushWriter(rw) // as ReverseProxy (lazyFlushWriter skips it: the upstream ended)
	}
	if len(res.Trailer) == announced {
		for k, vv := range res.Trailer {
			dst[k] = append(dst[k], vv...)
		}
		return false
	}
	for k, vv := range res.Trailer {
		if len(vv) == 0 {
			continue
		}
		k = trailerKey(k)
		if len(dst[k]) == 0 {
			dst[k] = vv // ours, as the header's values above
		} else {
			dst[k] = append(dst[k], vv...)
		}
	}
	return false
}

// trailerKey is k with http.TrailerPrefix (ReverseProxy's key for a
// trailer not announced); gRPC's are not built per call.
func trailerKey(k string) string {
	switch k {
	case "Grpc-Status":
		return http.TrailerPrefix + "Grpc-Status"
	case "Grpc-Message":
		return http.TrailerPrefix + "Grpc-Message"
	case "Grpc-Status-Details-Bin":
		return http.TrailerPrefix + "Grpc-Status-Details-Bin"
	}
	return http.TrailerPrefix + k
}

// isEventStream reports whether a Content-Type is text/event-stream (as
// ReverseProxy's mime.ParseMediaType test, parsed only when it could be).
func isEventStream(ct []string) bool {
	if len(ct) == 0 || !strings.Contains(strings.ToLower(ct[0]), "event-stream") {
		return false
	}
	base, _, _ := mime.ParseMediaType(ct[0])
	return base == "text/event-stream"
}

// flushWriter flushes rw (errors ignored, as ReverseProxy's).
func flushWriter(rw http.ResponseWriter) {
	if f, ok := rw.(interface{ FlushError() error }); ok {
		f.FlushError()
		return
	}
	http.NewResponseController(rw).Flush()
}

// copyFlushing copies src to dst through buf, flushing after every write
// when flush is set; read errors other than EOF and write errors are
// returned (ReverseProxy's copyBuffer).
func copyFlushing(dst http.ResponseWriter, src io.Reader, buf []byte, flush bool) error {
	for {
		nr, rerr := src.Read(buf)
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			if werr != nil {
				return werr
			}
			if nw != nr {
				return io.ErrShortWrite
			}
			if flush {
				flushWriter(dst)
			}
		}
		if rerr != nil {
			if rerr == io.EOF {
				return nil
			}
			return rerr
		}
	}
}

// noopCloseBody is ReverseProxy's noopCloseReader: Close only marks it,
// and a read after that fails.
type noopCloseBody struct {
	r      io.ReadCloser
	closed atomic.Bool // set by the handler, read by the transport's body writer
}

var errReadAfterClose = errors.New("agent: read of a forwarded request body after the handler returned")

func (b *noopCloseBody) Read(p []byte) (int, error) {
	if b.closed.Load() {
		return 0, errReadAfterClose
	}
	return b.r.Read(p)
}

func (b *noopCloseBody) Close() error { b.closed.Store(true); return nil }

// ReadReady reports whether a Read returns without waiting (h2up).
func (b *noopCloseBody) ReadReady() bool { return b.closed.Load() || httpproxy.ReadReady(b.r) }
