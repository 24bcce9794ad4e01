package httpproxy

import (
	"errors"
	"net/http"
	"time"
)

// An endpoint that answers before it has taken the whole request body
// (a 413 or 401 to a large upload): the pool stops writing and reads
// the answer (exchange, RawIO.OnStall).

// errAnsweredEarly ends the write of a request whose endpoint answered
// (or closed) before it took the whole body.
var errAnsweredEarly = errors.New("the endpoint answered before it took the whole request")

// onStall is called while a write of the request waits for an endpoint
// that takes none of it (RawIO.OnStall): one that answered already (413,
// 401 before reading the body) and holds the connection open would
// otherwise be written to for good; exchange reads its answer.
func (pc *poolConn) onStall() error {
	if ctx := pc.writing; ctx != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	if !pc.alive() {
		return errAnsweredEarly // bytes (or the end) came in: the answer
	}
	return nil
}

// earlyResponseWait bounds the look for an answer that came before a
// request body could be written whole.
const earlyResponseWait = 100 * time.Millisecond

// earlyResponse returns a final response the endpoint sent before the
// write of the request failed, if there is one, marked to close the
// connection; nil otherwise.
func (pc *poolConn) earlyResponse(req *http.Request) *http.Response {
	pc.c.SetReadDeadline(time.Now().Add(earlyResponseWait))
	defer pc.c.SetReadDeadline(time.Time{})
	pc.head.left = pc.p.cfg.MaxResponseHeadBytes
	defer func() { pc.head.left = noHeadLimit }()
	for {
		resp, err := http.ReadResponse(pc.br, req)
		if err != nil {
			return nil
		}
		if resp.StatusCode >= 100 && resp.StatusCode < 200 {
			if resp.StatusCode == http.StatusSwitchingProtocols {
				return nil
			}
			continue
		}
		if req.Context().Err() != nil {
			return nil // cancelled meanwhile: its poisoned deadline was just cleared
		}
		resp.Close = true
		return resp
	}
}
