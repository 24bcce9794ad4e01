package agent

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/fogmesh/fogmesh/internal/httpproxy"
)

// The HTTP/1.1 fast path. A client connection to a service port declared
// http is served on the goroutine that accepted it: read a request
// (httpproxy.LeanRequest, else http.ReadRequest), balance and retry it
// with the same lbTransport as the ReverseProxy path, forward it over a
// pooled persistent upstream connection on the same goroutine
// (httpproxy.Pool), and write the response back with one write. The net/http server and transport it replaces cost three
// goroutine hand-offs, a background read and two header maps per request;
// that was most of the ~130 µs of CPU a request cost (BENCHMARKS.md §6).
//
// Whatever the fast path does not handle goes, with the bytes read so far
// replayed, to the HTTP/2 server (package h2srv) for HTTP/2 with prior
// knowledge, else to the net/http server, and stays there for the rest of
// the connection: upgrades (WebSocket, h2c),
// Expect: 100-continue, CONNECT, any protocol version but HTTP/1.1 (which
// also lets the server answer malformed request lines), targets that are
// not origin-form, and headers larger than httpproxy.BufSize.
//
// What the fast path serves it parses with http.ReadRequest, the parser of
// net/http's server, or for a plain bodyless head with
// httpproxy.LeanRequest, which reads only heads that http.ReadRequest reads
// the same (FuzzLeanRequest), and then checks as that server does
// (httpproxy.CheckRequest), so it accepts no request the server would
// refuse and frames every body as the server would (FuzzH1Differential
// holds it to that).

// aLongTimeAgo as a deadline makes a blocked read return at once.
var aLongTimeAgo = time.Unix(1, 0)

// h1Path holds the fast path's upstream pools and its lbTransport.
type h1Path struct {
	s  *l7
	rt *lbTransport

	mu     sync.Mutex // guards the following
	pools  map[string]*httpproxy.Pool
	closed bool
}

func newH1Path(s *l7) *h1Path {
	return &h1Path{s: s, rt: &lbTransport{l7: s, h1: true}, pools: map[string]*httpproxy.Pool{}}
}

// serveH1 serves one client connection of an http port until it closes,
// or hands it to the net/http server. It owns tc.
func (s *l7) serveH1(ctx context.Context, tc *taggedConn) {
	c := tc.Conn
	stop := context.AfterFunc(ctx, func() { c.Close() }) // agent shutdown
	// Writes go through tc, which bounds each (taggedConn.Write).
	tc.raw = httpproxy.NewRawIO(c)
	wire := &h1Wire{tc: tc, c: c, raw: tc.raw}
	br, bw := httpproxy.GetReader(wire), httpproxy.GetWriter(wire)
	handedOff := false
	var cs *h1ClientConn
	defer func() {
		if wire.held != nil { // never, by the loop's order: sent before bw goes back to its pool
			wire.sendHeld(time.Time{})
		}
		stop()
		if cs != nil {
			// A panic mid-request (recoverConn) can leave the watch of a
			// slow head reading br: it lets go first.
			cs.stopHead()
			cs.joinDuplex(true) // before br goes back: the pool's goroutine may read it
		}
		httpproxy.PutReader(br)
		httpproxy.PutWriter(bw)
		if !handedOff {
			if cs != nil && cs.linger {
				lingerClose(c)
			}
			tc.Close()
		}
	}()
	connCtx, gone := context.WithCancel(context.WithValue(context.Background(), targetKey{}, tc.target))
	defer gone()
	cs = &h1ClientConn{remote: c.RemoteAddr().String(), conn: c, br: br, gone: gone, wire: wire, a: s.a, conn1: reqConn{target: tc.target, src: tc.clientID}}
	cs.watchHeadFn = cs.watchHead // one func value for the connection, not one per request with a body
	// Cancelled only by watch (a client gone mid-stream) and when the
	// connection ends: the pools hook only streaming bodies to it.
	cs.place = s.clients.holdConn(cs.remote, s.a.cfg.MaxRequestsPerClient) // its requests count there (roundTripAt)
	defer s.clients.dropConn(cs.place)
	defer cs.endHead()
	cs.ctx = httpproxy.WithStreamCancel(withConnIdentity(connCtx, tc.clientID))
	defer cs.endConn()
	httpproxy.SetResponseHeaderBuf(cs.ctx, &cs.resp)
	httpproxy.SetBodyWaiter(cs.ctx, cs) // the pool waits for a body's bytes through cs (h1duplex.go)
	if host, _, err := net.SplitHostPort(cs.remote); err == nil {
		cs.xff = []string{host}
	}
	if id := tc.clientID; id != "" {
		cs.srcID = []string{id}
	}
	lastPost := false
	for {
		now := cs.nextAt // the last response's reading if nothing waited since (forward)
		if cs.nextAt = (time.Time{}); now.IsZero() {
			now = monoTime()
		}
		if !wire.next(br, now, now.Add(cs.idleTimeout(s, tc.target))) {
			return // the last response's write failed
		}
		if _, err := br.Peek(1); err != nil {
			return // closed by the client, idle timeout or shutdown
		}
		if lastPost {
			// RFC 9112 §2.2: the CRLF some clients send after a POST body,
			// skipped as net/http's server does.
			peek, _ := br.Peek(4)
			br.Discard(httpproxy.NumLeadingCRorLF(peek))
			if _, err := br.Peek(1); err != nil {
				return
			}
		}
		wire.headStarted()
		req, eligible, clte, err := cs.readHead(br, c)
		if err == httpproxy.ErrHeaderTooLarge || (err == nil && !eligible) {
			// The net/http server takes the connection from here on.
			c.SetReadDeadline(time.Time{})
			rest := make([]byte, br.Buffered())
			br.Read(rest)
			tc.Conn = &prefixConn{Conn: c, r: io.MultiReader(bytes.NewReader(rest), c)}
			tc.raw = nil
			if !stop() {
				return // shutting down: tc is closed below
			}
			handedOff = true
			if bytes.HasPrefix(rest, []byte("PRI * HTTP/2.0")) {
				s.serveH2(tc, false) // HTTP/2 with prior knowledge: package h2srv
				return
			}
			if !s.ln.push(tc) {
				tc.Close()
			}
			return
		}
		if err != nil {
			return // incomplete header: client gone or header timeout, as net/http
		}
		lean := req != nil // a plain head; else net/http's parse
		if req == nil {
			if req, err = http.ReadRequest(br); err != nil {
				httpproxy.WriteStatus(bw, httpproxy.ReadRequestStatus(err), err.Error())
				return
			}
		}
		lastPost = req.Method == http.MethodPost
		if clte {
			req.Close = true // RFC 9112 §6.1: close after responding
		}
		if err := s.a.normalizeRequest(req); err != nil {
			httpproxy.WriteStatus(bw, http.StatusBadRequest, err.Error())
			return
		}
		if req.ContentLength != 0 {
			wire.moved()
			c.SetReadDeadline(time.Time{})
			req.Body = httpproxy.NewTimedBody(req.Body, c.SetReadDeadline) // bounded per read (httpproxy.TimedBody)
		}
		ok := s.h1.forward(cs, bw, req, lean)
		cs.requestDone()
		if !ok {
			return
		}
	}
}

// h1IdleTimeout is how long a client connection may wait for its next
// request: the service's timeouts.idle, capped by the server's
// IdleTimeout, as connState does for the net/http server.
func (s *l7) h1IdleTimeout(t listenTarget) time.Duration {
	return h1IdleTimeoutIn(s.a.view.Load(), t)
}

func h1IdleTimeoutIn(v *view, t listenTarget) time.Duration {
	if sv := v.services[t.svc]; sv != nil {
		return min(l7IdleTimeout(sv), defaultL7Idle)
	}
	return defaultL7Idle
}

// idleTimeout is h1IdleTimeout, worked out again only when the view
// changed (a view is never changed once published: a configuration
// change publishes a new one).
func (cs *h1ClientConn) idleTimeout(s *l7, t listenTarget) time.Duration {
	if v := s.a.view.Load(); v != cs.idleView {
		cs.idleView, cs.idle = v, h1IdleTimeoutIn(v, t)
	}
	return cs.idle
}

// h1ClientConn is what the fast path keeps per client connection.
type h1ClientConn struct {
	ctx    context.Context // carries the listenTarget for lbTransport and the client's identity; cancelled by gone
	remote string          // client address, for hashing and sessions
	xff    []string        // X-Forwarded-For: the client's IP (read-only)
	srcID  []string        // the identity header's value: the client's workload identity (read-only; nil: none)
	// xfh is the last request's X-Forwarded-Host value (read-only), kept
	// for the next request with the same Host: most clients send one.
	xfh  []string
	a    *Agent // logs and counts a panic of its watches (recoverWatch); nil in some tests
	conn net.Conn
	br   *bufio.Reader
	wire *h1Wire // the writer of the response (h1Wire.flush)
	gone context.CancelFunc
	// idle is the idle timeout for view idleView (idleTimeout).
	idleView *view
	idle     time.Duration
	// hb holds the header of a request read by httpproxy.LeanRequest, resp
	// that of a lean response to it (httpproxy.SetResponseHeaderBuf),
	// until headersDone; hb's map (not its values) is the next request's
	// (requestDone), resp's never.
	hb, resp httpproxy.HeaderBuf
	// linger: a request body was left unread; the connection is closed
	// lingering (lingerClose).
	linger bool
	// done wraps each response's body, to release what its request holds
	// (reqHold.onDoneIn): forward closes it before it returns. sent is
	// the response forward wrote and closed (requestDone).
	done doneBody
	sent *http.Response
	// open is the body of the response forward has from the round trip
	// until it has closed it (endConn: a panic in between).
	open io.ReadCloser

	// clk is what the request shares with lbTransport (conn1, clock readings);
	// nextAt (zero: none) the serving loop's next reading, the last
	// response's end if nothing waited since (forward).
	clk    reqShare
	nextAt time.Time
	conn1  reqConn // what ctx carries for lbTransport, handed to it directly (reqShare.conn)

	// place is the client's in the per-client limit, kept while the
	// connection is open (clientLimiter.holdConn; nil: no limit).
	place *clientPlace

	headWatchState // the watch of a request whose response head is slow (h1headwatch.go)
	duplexState    // a body sent on beside its answer (h1duplex.go)
}

// headersDone ends the last request's headers: the next request gets new ones.
func (cs *h1ClientConn) headersDone() {
	cs.hb.Done()
	cs.resp.Done()
}

// endConn ends the connection's last request: its headers, and what it
// still holds if forward never closed its response's body (a panic after
// the round trip; recoverConn keeps the agent up): its slots and its
// client's place would stay taken for good, and its access-log line and
// span would never be written (l7panic.go: a 500 with the panic). Once
// per connection, not per request: a request forward finished has its
// body done already. Each step runs even if one before panics (a body's
// Close, a bug); the panic goes on to recoverConn.
func (cs *h1ClientConn) endConn() {
	p := recover() // endConn is deferred by serveH1: the panic, if any
	if p != nil {
		defer func() { panic(p) }() // last: recoverConn logs and counts it
	}
	defer cs.headersDone()
	defer cs.done.abandon()
	if p != nil && cs.open != nil {
		body := cs.open
		cs.open = nil
		abandonResponse(body, p, cs.wire != nil && cs.wire.wrote)
	}
}

// requestDone is headersDone once forward returned, the request (a lean
// one's: its URL and values) and its header map kept for the next request
// (httpproxy.HeaderBuf.Recycle), and so is the response forward wrote
// (sent) if the pool's lean parse had it from resp: nothing holds them
// then. The pool wrote the request before its RoundTrip returned
// (on this goroutine: a lean request has no body to write later); a
// mirror's copy and egress masking clone the header before they go on;
// the access log and trace keep strings (immutable: the values are never
// reused); a retried response read on in the background (keepResponse)
// holds its request but reads only its own body and header; the response
// was written and its body closed within forward.
func (cs *h1ClientConn) requestDone() {
	cs.hb.Recycle()
	cs.resp.RecycleResponse(cs.sent) // the lean response written, not another (a retry's)
	cs.sent = nil
}

// forward proxies one request and writes its response; it reports whether
// the connection may carry another request. lean: in was read by
// httpproxy.LeanRequest, whose parse checked every header field's name and
// value as CheckRequest does (only its Host is left to check).
func (p *h1Path) forward(cs *h1ClientConn, bw *bufio.Writer, in *http.Request, lean bool) bool {
	check := httpproxy.CheckRequest
	if lean {
		check = httpproxy.CheckLeanRequest
	}
	if msg := check(in); msg != "" {
		httpproxy.WriteStatus(bw, http.StatusBadRequest, msg)
		return false
	}
	in.RemoteAddr = cs.remote
	keep := !in.Close
	hasBody := !httpproxy.BodyNone(in.Body)
	body := in.Body
	if hasBody {
		if tb, ok := body.(*httpproxy.TimedBody); ok {
			tb.OnEnd(cs.watchHeadFn) // the client's connection is free to watch once the body is read
			cs.body, cs.bodyLen = tb, in.ContentLength
		}
		in.Body = httpproxy.ClientBody{R: body}
	}
	// The request sent on, as ReverseProxy's Rewrite makes it.
	h := in.Header
	if !lean || !cs.hb.HeaderClean() { // a lean head with no field to scrub is left as it is
		httpproxy.ScrubRequestHeader(h, h["Connection"])
	}
	httpproxy.ScrubTrailer(in.Trailer) // declared (a mirror clones them); the pool sends none
	if len(cs.xfh) != 1 || cs.xfh[0] != in.Host {
		cs.xfh = []string{in.Host}
	}
	httpproxy.SetXForwardedValues(h, cs.xff, cs.xfh)
	// The source identity, as setSourceIdentity sets it (no value slice
	// made per request). The client's own is gone already: scrubbed
	// above, or a clean lean head had none (scrubsCanonical names it).
	if cs.srcID != nil {
		h[SourceIDHeader] = cs.srcID
	}
	in.Close = false
	// A client request from here on, as ReverseProxy makes it (mirrors go
	// through http.Transport, which insists on these).
	in.RequestURI = ""
	in.URL.Scheme = "http"
	in.URL.Host = in.Host
	if in.Host == "" { // "Host:" with no value: name the service, as the Rewrite does
		t := cs.conn1.target
		in.URL.Host = t.svc[strings.IndexByte(t.svc, '/')+1:]
	}

	out := in // a lean request has its context already (and no body)
	if !httpproxy.SameContext(in.Context(), cs.ctx) || hasBody {
		out = in.WithContext(cs.ctx)
	}
	cs.clk = reqShare{conn: &cs.conn1}
	if !hasBody {
		cs.clk.head = cs.watchHeadAt() // the attempt's start too, if nothing waits before it (reqShare)
	}
	resp, err := p.rt.roundTripAt(out, cs.place, &cs.done, &cs.clk) // resp.Body is closed below, on every way out
	if err == nil {
		cs.open, cs.wire.wrote = resp.Body, false // wrote from here on: the response's head went out (endConn)
	}
	if tb, ok := body.(*httpproxy.TimedBody); ok && hasBody {
		tb.OnEnd(nil) // a body read to its end later (drained) arms no watch
	}
	cs.body, cs.bodyQueued, cs.bodyAsked = nil, false, false
	duplex := cs.duplexRunning() // the body's rest is still sent beside the answer: no watch, no drain before it ends
	cs.stopHead()
	if err != nil {
		var cbe *httpproxy.ClientBodyError
		if errors.As(err, &cbe) && !httpproxy.BodyTimedOut(in) {
			return false // the client broke off its body: nothing to answer
		}
		w := &httpproxy.ErrorWriter{}
		p.s.errorHandler(w, in, err)
		if w.Code() == 0 {
			return false
		}
		if hasBody {
			cs.joinDuplex(!keep)
			keep = cs.drainOrLinger(in, body, keep)
		}
		w.Send(bw, keep, in.Method == http.MethodHead)
		return bw.Flush() == nil && keep
	}
	if tb, ok := body.(*httpproxy.TimedBody); ok && hasBody && (!duplex || resp.Close) && in.ContentLength-tb.Consumed() > httpproxy.MaxDrain {
		// More body left than a drain takes (an endpoint answered before
		// taking it; in full duplex, and closes: else it may read on): the
		// response says "Connection: close", so the client does not send
		// its next request on a connection about to close, as net/http's
		// server. (A body that can be drained is drained after the
		// response: a client may wait for the answer before it sends it.)
		keep, cs.linger = false, true
	}
	whole := resp.ContentLength == 0 || resp.ContentLength > 0 && bufferedUpstream(resp.Body) >= resp.ContentLength
	watch := cs.watch
	if duplex {
		watch = cs.watchBeside // the client is read meanwhile: watched once that ends
	}
	werr := httpproxy.WriteResponseUnflushed(bw, resp, in, keep, watch)
	resp.Body.Close()
	// Written and closed: requestDone may reuse it.
	cs.sent, cs.open = resp, nil
	if werr != nil || cs.wire.flush(bw, keep && !hasBody) != nil { // a body left to drain reads first: not held
		return false
	}
	if whole && cs.wire.held != nil && !cs.wire.wrote {
		// Nothing waited since the response head came (its body was in,
		// the response is held for the next read): that reading is the
		// serving loop's next one too.
		cs.nextAt = cs.clk.end
	}
	if hasBody {
		cs.joinDuplex(!keep)
		keep = cs.drainOrLinger(in, body, keep)
	}
	return keep
}

// drainOrLinger is drain for a connection kept; one that closes anyway
// (the client asked for it) is closed lingering if its body has bytes
// left unread, as net/http's server (a body read to its end needs no
// lingering: nothing the client sends is left to reset the connection).
func (cs *h1ClientConn) drainOrLinger(in *http.Request, body io.Reader, keep bool) bool {
	if !keep {
		cs.linger = cs.linger || bodyLeft(in, body)
		return false
	}
	return cs.drain(body)
}

// bodyLeft reports whether a request body may have bytes the client sent
// (or still sends) that nobody read: not known to be read to its end.
func bodyLeft(in *http.Request, body io.Reader) bool {
	tb, ok := body.(*httpproxy.TimedBody)
	switch {
	case !ok:
		return true
	case in.ContentLength >= 0 && tb.Consumed() >= in.ContentLength:
		return false
	default:
		return !tb.Ended() // chunked: read to its last chunk
	}
}

// drain reads the rest of a request body no endpoint took
// (httpproxy.DrainBody); if it cannot, the connection is closed
// lingering (lingerClose).
func (cs *h1ClientConn) drain(body io.Reader) bool {
	if httpproxy.DrainBody(body) {
		return true
	}
	cs.linger = true
	return false
}

// bufferedUpstream is how many bytes of body are buffered already
// (httpproxy.UpstreamBuffered; 0: unknown).
func bufferedUpstream(body io.Reader) int64 {
	if ub, ok := body.(httpproxy.UpstreamBuffered); ok {
		return int64(ub.BufferedUpstream())
	}
	return 0
}

// lingerFor bounds lingerClose.
const lingerFor = 500 * time.Millisecond

// lingerClose readies the close of a client connection whose request
// body was left unread (an endpoint answered 413 or 401 before taking
// it), as net/http's server does: the response goes out with a FIN, and
// what the client still sends is read and dropped for a while. Closed at
// once with unread bytes, the connection would get a reset, and the
// client's kernel could drop the response before the client read it.
func lingerClose(c net.Conn) {
	cw, ok := c.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil {
		return
	}
	c.SetReadDeadline(time.Now().Add(lingerFor))
	io.Copy(io.Discard, c) // until the client closes, or lingerFor: not by size (a reset while it still sends could drop the answer)
}
