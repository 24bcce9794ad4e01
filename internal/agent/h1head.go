package agent

import (
	"bufio"
	"net"
	"net/http"

	"github.com/fogmesh/fogmesh/internal/httpproxy"
)

// readHead waits for the next request head in br (from c) and reads it if
// it is plain (httpproxy.LeanRequestHead: req not nil), else reports
// whether the fast path serves it (eligible, clte: httpproxy.Eligible),
// for http.ReadRequest to parse; err is PeekHeader's.
//
// A plain head already whole in the buffer (most are: a client's request
// comes in one segment) is found and parsed in one walk, before
// PeekHeader would search it for its end (issue 14); one LeanRequestHead
// reads is one Eligible takes (no Upgrade, Expect, Content-Length or
// Transfer-Encoding, one Host).
func (cs *h1ClientConn) readHead(br *bufio.Reader, c net.Conn) (req *http.Request, eligible, clte bool, err error) {
	if req = httpproxy.LeanRequestHead(cs.ctx, br, &cs.hb, -1); req != nil {
		return req, true, false, nil
	}
	buffered := br.Buffered()
	hdr, err := httpproxy.PeekHeader(br, c)
	if br.Buffered() != buffered {
		cs.wire.moved() // it read on, under the head's deadline
		if err == nil { // else the same bytes LeanRequestHead declined
			req = httpproxy.LeanRequestHead(cs.ctx, br, &cs.hb, len(hdr))
		}
	}
	if err != nil || req != nil {
		return req, req != nil, false, err
	}
	eligible, clte = httpproxy.Eligible(hdr)
	return nil, eligible, clte, nil
}
