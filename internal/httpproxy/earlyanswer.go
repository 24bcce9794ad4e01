package httpproxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"os"
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
	if pc.inDuplex.Load() {
		if pc.poisoned.Load() {
			// The poison's deadline ended the wait, and RawIO.Write would
			// arm its stall deadline again over it: the write ends here,
			// as a net.Conn's does past its deadline (the rest sent to an
			// endpoint that reads nothing, its request's context ended:
			// TestPoolDuplexContextEndsRest, outside race builds).
			return os.ErrDeadlineExceeded
		}
		return nil // answered already: the body's rest is sent beside it (sendRest), the answer read elsewhere
	}
	if h := pc.p.testHookStall; h != nil {
		defer h()
	}
	if ctx := pc.writing; ctx != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	if pc.alive() || pc.skipInterim() {
		return nil
	}
	if pc.bad != nil {
		return pc.bad // exchange fails with it
	}
	return errAnsweredEarly // a final head, the end, or bytes that are no response: the answer
}

// skipInterim reads and drops the interim (1xx but 101) response heads an
// endpoint sent while its request body waits, as exchange drops those that
// come after it (102 Processing while the endpoint works, 100 Continue,
// 103 Early Hints): they do not end the upload. It reports whether nothing
// else came: no final head, no end, no error, at most the start of one
// more interim head. One longer than the reader's buffer (BufSize: a 103
// with many Link fields) is gathered beside it, in pc.long, across calls
// (gatherInterim), up to MaxResponseHeadBytes; exchange reads the rest of
// one the write left unfinished (finishInterim). A head http.ReadResponse
// refuses is no answer to return but the exchange's failure, as with
// net/http's Transport: it is recorded in pc.bad.
//
// Each call reads the socket once at most, and RawIO calls it once every
// StallAfter at most. What it reads counts against the request's
// MaxResponseHeadBytes (exchange sets pc.head before the write), as
// net/http's Transport counts every 1xx head and the final one against
// one MaxResponseHeaderBytes: past it the read fails (errHeadTooLarge) and
// so does the exchange (earlyResponse).
func (pc *poolConn) skipInterim() bool {
	br := pc.br
	if br.Buffered() == 0 || pc.pending() {
		// Bytes wait (or the end, an error): one read does not block.
		if _, err := br.Peek(br.Buffered() + 1); err != nil && err != bufio.ErrBufferFull {
			return false
		}
	}
	for br.Buffered() > 0 {
		if pc.long != nil {
			if pc.gatherInterim() != nil {
				return false
			}
			continue
		}
		b, _ := br.Peek(br.Buffered())
		n, interim := interimHead(b)
		if !interim {
			return false
		}
		if n == 0 {
			if len(b) < br.Size() {
				return true // the rest may come, and fit
			}
			if !longInterimStart(b) {
				return false
			}
			pc.long = make([]byte, 0, 2*len(b))
			continue
		}
		// Whole in the buffer: read without blocking.
		if _, err := http.ReadResponse(br, nil); err != nil {
			pc.bad = fmt.Errorf("%w: %w", errBadInterim, err)
			return false
		}
	}
	return true
}

// longInterimStart reports whether b, the start of a head that interimHead
// takes for an interim one and that fills the reader's buffer, has an
// interim status (1xx but 101) when its status line is not whole yet.
func longInterimStart(b []byte) bool {
	if bytes.IndexByte(b, '\n') >= 0 {
		return true // interimHead read the status line
	}
	return len(b) > 12 && isDigit(b[10]) && isDigit(b[11]) && !(b[10] == '0' && b[11] == '1') && b[12] == ' '
}

// errBadInterim: http.ReadResponse refused an interim head a stalled
// write read.
var errBadInterim = errors.New("httpproxy: the endpoint's 1xx response head is malformed")

// errLongInterim: a long interim head gathered across stalls is no
// interim head after all.
var errLongInterim = errors.New("httpproxy: the endpoint's 1xx response head is not one")

// gatherInterim moves what the reader holds of the long interim head being
// gathered (pc.long) to it, up to the head's end; once whole, the head is
// parsed as exchange parses one (http.ReadResponse) and dropped, pc.long
// back to nil. An error (recorded in pc.bad too): the head is refused, no
// interim one, or longer than MaxResponseHeadBytes.
func (pc *poolConn) gatherInterim() error {
	err := pc.gatherLong()
	if err != nil {
		pc.bad = err
	}
	return err
}

// gatherLong is gatherInterim but for pc.bad.
func (pc *poolConn) gatherLong() error {
	b, _ := pc.br.Peek(pc.br.Buffered())
	from := len(pc.long)
	pc.long = append(pc.long, b...)
	// The blank line that ends it (LF, or CRLF, after an LF: headEnd) may
	// begin in the bytes gathered before.
	at := max(from-2, 0)
	end := headEnd(pc.long[at:])
	if end >= 0 {
		end += at
	}
	if end < 0 {
		pc.br.Discard(len(b))
		if int64(len(pc.long)) > pc.p.cfg.MaxResponseHeadBytes {
			return errHeadTooLarge
		}
		return nil
	}
	pc.br.Discard(len(b) - (len(pc.long) - end))
	head := pc.long[:end]
	pc.long = nil
	if int64(len(head)) > pc.p.cfg.MaxResponseHeadBytes {
		return errHeadTooLarge
	}
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(head)), nil)
	if err != nil {
		return fmt.Errorf("%w: %w", errBadInterim, err)
	}
	if resp.StatusCode < 100 || resp.StatusCode > 199 || resp.StatusCode == http.StatusSwitchingProtocols {
		return errLongInterim
	}
	return nil
}

// finishInterim reads the rest of a long interim head a stall began to
// gather (gatherInterim) and drops it: the write of the request ended
// meanwhile. Reads block, within the connection's deadlines.
func (pc *poolConn) finishInterim() error {
	for pc.long != nil {
		if _, err := pc.br.Peek(1); err != nil {
			return err
		}
		if err := pc.gatherInterim(); err != nil {
			return err
		}
	}
	return nil
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
// connection; nil otherwise. An error: the exchange fails with it rather
// than with the write's, as with net/http's Transport: a 1xx head was
// refused (pc.bad), or the heads went past MaxResponseHeadBytes (the
// count exchange began before the write goes on).
func (pc *poolConn) earlyResponse(req *http.Request) (*http.Response, error) {
	// setReadDeadline: this deadline replaces a fused read's left set
	// (the reads below do not clear it as that one, upWire.unrecheck), and
	// a cancelled request's poison stays.
	pc.setReadDeadline(time.Now().Add(earlyResponseWait))
	defer pc.setReadDeadline(time.Time{})
	if err := pc.finishInterim(); err != nil {
		if pc.bad != nil || errors.Is(err, errHeadTooLarge) {
			return nil, err
		}
		return nil, nil
	}
	for {
		resp, err := http.ReadResponse(pc.br, req)
		if err != nil {
			if errors.Is(err, errHeadTooLarge) {
				return nil, err
			}
			return nil, nil
		}
		if resp.StatusCode >= 100 && resp.StatusCode < 200 {
			if resp.StatusCode == http.StatusSwitchingProtocols {
				return nil, nil
			}
			continue
		}
		if req.Context().Err() != nil {
			return nil, nil // cancelled meanwhile
		}
		resp.Close = true
		return resp, nil
	}
}
