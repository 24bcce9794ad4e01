package httpproxy

import (
	"context"
	"net/http"
)

// HeaderBuf holds a client connection's header map, and the slice its
// values are cut from, for one request (LeanRequest) or the response to it
// (WithResponseHeaderBuf) at a time. Across connections nothing is
// shared: a pool of headers tried here (branch h/h1cpu2) leaked, since
// parts of the agent may still read a header after its request ended
// (net/http's Transport writes a request on its own goroutine and can
// return the response before it is done; per-connection caches kept value
// slices then): with its storage poisoned on return in race builds, the
// agent's tests read poisoned headers in egress requests and in a cached
// identity header.
//
// On one connection, a request and its header may be the next request's
// when its caller says nothing holds them past the request (Recycle; the
// fast path once forward returned: its requests go to the pool, which
// writes them before it returns, and whatever keeps a request past it, a
// mirror, egress masking, clones it first): the map, cleared, and the
// request with its URL and first values (leanReq), zeroed. Done instead
// leaves them to their holders. Recycle's clear and zeroing are writes, so
// in race builds a late reader on another goroutine is reported; the
// strings (the head's, the values are its substrings) are never reused.
//
// A plain lean response (rawFields) gets no map at all: HeaderBuf keeps its
// field lines, resp.Header stays nil, and whoever reads the response's
// fields does so with ResponseFields or ResponseField, whoever changes them
// or keeps the response past its request (a retry's kept answer) calls
// ResponseHeader first, and WriteResponse passes the lines on as they came.
// A raw header lasts until Done: a response used after its request has
// none.
type HeaderBuf struct {
	h    http.Header // the current request's, and the slice its values are cut from; nil: none
	strs []string
	busy bool // a response holds h, or is raw (WithResponseHeaderBuf)
	// raw is the lean response (if any) whose header is still its field
	// lines as the endpoint sent them, rawFields: its Header is nil until
	// ResponseHeader makes it.
	raw       *http.Response
	rawFields string
	rawNames  uint64 // rawFields's names' lengths (rawFields)
	// req is base's; Done keeps it (it holds no header).
	req *http.Request
	// spare is the map of the last request, cleared (Recycle), for the
	// next take; n is the fields of h's request (take).
	spare http.Header
	n     int
	// lr is what LeanRequest allocated for the current request (nil:
	// none); spareReq the last request's, zeroed (Recycle), for the next.
	lr, spareReq *leanReq
	// clean: lr's request was read (LeanRequest) and its header has no
	// field ScrubRequestHeader deletes (HeaderClean).
	clean bool
	// leanResp is the raw lean response lent this request (nil: none),
	// spareResp the last one's, zeroed (RecycleResponse), for the next.
	leanResp, spareResp *leanResp
	// arena holds the heads of the lean requests (LeanRequest) or lean
	// responses (leanResponse) read with hb: kept across requests.
	arena headArena
	// scan is LeanRequest's walk of the last head (headScan), kept here
	// so that it is not zeroed for every request.
	scan headScan
}

// RecycleResponse is Done for the response side of a request whose
// caller wrote sent (nil: none) and closed its body, and holds it no
// longer: if sent is the lean response hb lent, it is the next request's
// (newLeanResponse). Any other response lent (a retried attempt's, kept
// or read on in the background) is left to its holders.
func (hb *HeaderBuf) RecycleResponse(sent *http.Response) {
	lr := hb.leanResp
	hb.Done()
	if lr != nil && sent != nil && &lr.resp == sent {
		*lr = leanResp{} // in race builds, a write late readers race with
		hb.spareResp = lr
	}
}

// leanReq returns a zero leanReq for a request: hb's spare if it has one.
func (hb *HeaderBuf) leanReq() *leanReq {
	if hb == nil {
		return new(leanReq)
	}
	lr := hb.spareReq
	if lr == nil {
		lr = new(leanReq)
	}
	hb.spareReq, hb.lr, hb.clean = nil, lr, false
	return lr
}

// take returns an empty header and n values to cut: hb's current ones
// while a request lasts, else new ones hb keeps until Done.
// The values are cut from buf when it has room for them (a buffer as new
// as the header, or nil).
func (hb *HeaderBuf) take(n int, buf []string) (http.Header, []string) {
	if hb != nil && hb.h != nil && n <= cap(hb.strs) {
		clear(hb.h)
		return hb.h, hb.strs[:n]
	}
	var h http.Header
	if hb != nil && hb.spare != nil {
		h, hb.spare = hb.spare, nil // cleared by Recycle
	} else {
		h = make(http.Header, n)
	}
	strs := buf[:0]
	if n <= cap(strs) {
		strs = strs[:n]
	} else {
		strs = make([]string, n)
	}
	if hb != nil && n <= maxKeptFields {
		hb.h, hb.strs, hb.n = h, strs, n
	}
	return h, strs
}

// maxSpareFields: Recycle keeps no map of a request of more fields, or
// that had more when it ended (a map keeps the room it grew to).
const maxSpareFields = 16

// Recycle is Done for a request whose header nothing holds past it (its
// caller's word): its map, cleared, is the next request's. A map grown
// past maxSpareFields is left to the collector.
func (hb *HeaderBuf) Recycle() {
	h, n, lr := hb.h, hb.n, hb.lr
	hb.Done()
	if h != nil && n <= maxSpareFields && len(h) <= maxSpareFields {
		clear(h)
		hb.spare = h
	}
	if lr != nil {
		*lr = leanReq{} // nothing of this request's left for the next; in race builds, a write late readers race with
		hb.spareReq = lr
	}
}

// HeaderClean reports whether the current request was read by
// LeanRequest into hb and its parse met no field name that
// ScrubRequestHeader deletes (scrubsName): on its header as LeanRequest
// returned it, ScrubRequestHeader would change nothing, so the fast path
// skips it (a pass over the map, about 0.1 µs a request). False for any
// other request, and after Done.
func (hb *HeaderBuf) HeaderClean() bool { return hb.lr != nil && hb.clean }

// base returns a request with context ctx and nothing else, kept for the
// requests of one context (the fast path's client connection) so that
// LeanRequest copies it instead of calling WithContext, which would
// allocate a second request. It is only ever copied, never handed out.
func (hb *HeaderBuf) base(ctx context.Context) *http.Request {
	if hb.req == nil || !SameContext(hb.req.Context(), ctx) {
		hb.req = new(http.Request).WithContext(ctx)
	}
	return hb.req
}

// Done ends hb's current request: its header is left to whoever still
// holds it, and the next request gets a new one.
func (hb *HeaderBuf) Done() {
	hb.h, hb.strs, hb.busy, hb.n, hb.lr, hb.leanResp, hb.clean = nil, nil, false, 0, nil, nil, false
	hb.raw, hb.rawFields = nil, ""
}

// WithResponseHeaderBuf returns ctx carrying hb, whose header the upstream
// pool uses for one lean response (leanResponse) of the requests with that
// context until hb.Done: the fast path's client connection, whose requests and
// their responses are done one after the other.
func WithResponseHeaderBuf(ctx context.Context, hb *HeaderBuf) context.Context {
	return context.WithValue(ctx, respHeaderKey{}, hb)
}

type respHeaderKey struct{}

// SetResponseHeaderBuf is WithResponseHeaderBuf for ctx, one of
// WithStreamCancel's: hb goes with its mark, which the pool looks up for
// every request anyway (cancelsOnlyStreams), so a request's three or four
// looks for hb stop there, not one node deeper (one cache line more each;
// issue 14). Nothing on ctx's way out may wrap it in another
// WithResponseHeaderBuf: the mark's would be found first.
func SetResponseHeaderBuf(ctx context.Context, hb *HeaderBuf) {
	if m, _ := ctx.Value(streamCancelKey{}).(*streamCancelMark); m != nil {
		m.hb = hb
	}
}

// headerBufOf returns ctx's HeaderBuf (SetResponseHeaderBuf,
// WithResponseHeaderBuf; nil: none).
func headerBufOf(ctx context.Context) *HeaderBuf {
	if m, _ := ctx.Value(streamCancelKey{}).(*streamCancelMark); m != nil && m.hb != nil {
		return m.hb
	}
	hb, _ := ctx.Value(respHeaderKey{}).(*HeaderBuf)
	return hb
}

// DetachResponseHeader gives up the header ctx's HeaderBuf (if any) lent
// to a response, for a response that outlives its request (its body read
// on in the background): the next response gets a header of its own.
func DetachResponseHeader(ctx context.Context) {
	if hb := headerBufOf(ctx); hb != nil {
		if hb.raw != nil {
			ResponseHeader(hb.raw) // a map of its own: hb's fields are reset
		}
		hb.h, hb.strs, hb.busy = nil, nil, false // the response keeps them
		hb.leanResp = nil                        // and its leanResp
	}
}

// responseHeader returns the header for a lean response of n fields: ctx's
// HeaderBuf's unless a response (a retried attempt's, kept) holds it.
func responseHeader(ctx context.Context, n int) (http.Header, []string) {
	hb := headerBufOf(ctx)
	if hb == nil || hb.busy {
		return make(http.Header, n), make([]string, n)
	}
	hb.busy = true
	return hb.take(n, nil)
}

// maxKeptFields: a HeaderBuf keeps no header of more fields for a second
// take within one request.
const maxKeptFields = 32
