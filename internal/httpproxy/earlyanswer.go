package httpproxy

import (
	"bufio"
	"bytes"
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
	if pc.alive() || pc.skipInterim() {
		return nil
	}
	return errAnsweredEarly // a final head, the end, or bytes that are no response: the answer
}

// skipInterim reads and drops the interim (1xx but 101) response heads an
// endpoint sent while its request body waits, as exchange drops those that
// come after it (102 Processing while the endpoint works, 100 Continue):
// they do not end the upload. It reports whether nothing else came: no
// final head, no end, no error, at most the start of one more interim
// head, and that no longer than the reader's buffer (BufSize) can hold,
// which bounds the wait for the rest of one.
//
// Each call reads the socket once at most, and RawIO calls it once every
// StallAfter at most: interim heads read here are not counted against
// MaxResponseHeadBytes.
func (pc *poolConn) skipInterim() bool {
	br := pc.br
	if br.Buffered() == 0 || pc.pending() {
		// Bytes wait (or the end, an error): one read does not block.
		if _, err := br.Peek(br.Buffered() + 1); err != nil && err != bufio.ErrBufferFull {
			return false
		}
	}
	for br.Buffered() > 0 {
		b, _ := br.Peek(br.Buffered())
		n, interim := interimHead(b)
		if !interim {
			return false
		}
		if n == 0 {
			return len(b) < br.Size() // the rest may come, and fit
		}
		// Whole in the buffer: read without blocking.
		if _, err := http.ReadResponse(br, nil); err != nil {
			return false
		}
	}
	return true
}

// interimHead reports whether b, the start of what an endpoint sent, is or
// may become an interim (1xx but 101) response head, and if so the length
// of that head once it is whole in b (0: not yet). It reads lines as
// http.ReadResponse does (LF ends them, a CR before it is dropped, an empty
// line ends the head); a head it takes, ReadResponse refuses or takes as
// the same interim one (FuzzInterimHead).
func interimHead(b []byte) (n int, interim bool) {
	const start = "HTTP/1.x 1"
	for i := 0; i < len(b) && i < len(start); i++ {
		if b[i] != start[i] && (start[i] != 'x' || !isDigit(b[i])) {
			return 0, false
		}
	}
	line, rest, ok := bytes.Cut(b, []byte("\n"))
	if !ok {
		return 0, true // the status line is not whole yet
	}
	line = bytes.TrimSuffix(line, []byte("\r"))
	if len(line) < len("HTTP/1.1 1xx") || !isDigit(line[10]) || !isDigit(line[11]) ||
		line[10] == '0' && line[11] == '1' || len(line) > 12 && line[12] != ' ' {
		return 0, false // not 1xx, or 101
	}
	for {
		line, rest, ok = bytes.Cut(rest, []byte("\n"))
		if !ok {
			return 0, true
		}
		if len(line) == 0 || len(line) == 1 && line[0] == '\r' {
			return len(b) - len(rest), true
		}
	}
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
