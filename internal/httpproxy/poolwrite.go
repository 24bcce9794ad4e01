package httpproxy

// What a pool connection writes: the request line, header and body.

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"strconv"
)

// writeRequest writes the request line, header and body, then flushes:
// one write for a request without a body or with a small one.
func (pc *poolConn) writeRequest(req *http.Request) error {
	bw := pc.bw
	uri := req.URL.RequestURI() // no allocation for a path that needs no escaping and no query
	bw.WriteString(req.Method)
	bw.WriteByte(' ')
	bw.WriteString(uri)
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	bw.WriteString(host)
	bw.WriteString("\r\n")
	h := req.Header
	_, hadLength := h["Content-Length"]
	for k, vv := range h {
		if k == "Content-Length" {
			continue
		}
		for _, v := range vv {
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(v)
			bw.WriteString("\r\n")
		}
	}
	hasBody := req.Body != nil && req.Body != http.NoBody
	chunked := hasBody && req.ContentLength < 0
	switch {
	case chunked:
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	case req.ContentLength > 0 || hadLength:
		var num [20]byte
		bw.WriteString("Content-Length: ")
		bw.Write(strconv.AppendInt(num[:0], max(req.ContentLength, 0), 10))
		bw.WriteString("\r\n")
	}
	bw.WriteString("\r\n")
	if hasBody {
		var w io.Writer = bw
		var cw io.WriteCloser
		if chunked {
			cw = httputil.NewChunkedWriter(bw)
			w = cw
		}
		buf := CopyBuffers.Get()
		n, err := copyBody(w, req.Body, buf)
		CopyBuffers.Put(buf)
		if err != nil {
			return err
		}
		if !chunked && n != max(req.ContentLength, 0) {
			// The head promised another length: the upstream would take
			// the next request's bytes as this body (as http.Transport,
			// refuse; the caller closes the connection).
			return fmt.Errorf("request body: %d bytes sent for Content-Length %d", n, req.ContentLength)
		}
		if chunked {
			// Request trailers stay behind, as on the ReverseProxy and h2c
			// paths (which lose their values): authorization never sees
			// them, and a workload that merges them into the header must
			// not get a field past a header-based DENY. gRPC clients send
			// none; response trailers pass.
			endChunked(bw, cw, nil)
		}
	}
	return pc.flushRequest(bw, !hasBody) // a bodyless request: written in its response's read
}

// copyBody copies with buf (io.CopyBuffer would hand bufio.Writer's
// ReadFrom the reader, and net.TCPConn's ReadFrom allocates its own buffer).
func copyBody(w io.Writer, r io.Reader, buf []byte) (int64, error) {
	var n int64
	for {
		m, err := r.Read(buf)
		if m > 0 {
			if _, werr := w.Write(buf[:m]); werr != nil {
				return n, werr
			}
			n += int64(m)
		}
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}
