package httpproxy

import (
	"bufio"
	"bytes"
	"context"
	"testing"
)

// BenchmarkLeanExchange reads a plain request head (LeanRequest, as the
// fast path with its client connection's HeaderBuf) and a plain response
// head (leanResponse): the lean parses' CPU and allocations per request.
func BenchmarkLeanExchange(b *testing.B) {
	reqHead := []byte("GET / HTTP/1.1\r\nHost: bench.demo\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n")
	respHead := []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok")
	ctx := context.Background()
	var hb, resp HeaderBuf
	ctx = WithResponseHeaderBuf(ctx, &resp)
	rr, pr := bytes.NewReader(reqHead), bytes.NewReader(respHead)
	br := bufio.NewReaderSize(rr, BufSize)
	pc := &poolConn{br: bufio.NewReaderSize(pr, BufSize)}
	b.ReportAllocs()
	for b.Loop() {
		rr.Reset(reqHead)
		br.Reset(rr)
		br.Peek(1)
		req := LeanRequest(ctx, br, &hb)
		if req == nil {
			b.Fatal("declined")
		}
		pr.Reset(respHead)
		pc.br.Reset(pr)
		pc.br.Peek(1)
		if pc.leanResponse(req) == nil {
			b.Fatal("declined")
		}
		hb.Done()
		resp.Done()
	}
}
