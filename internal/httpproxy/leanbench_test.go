package httpproxy

import (
	"bufio"
	"bytes"
	"context"
	"net/http"
	"testing"
	"time"
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

// BenchmarkTimedBodyAnswered is the fast path's TimedBody from the
// endpoint's response head on: armed, then Answered (the cost a request
// with a body pays there; not net/http's HTTP/1 server, so no full duplex).
func BenchmarkTimedBodyAnswered(b *testing.B) {
	var tb TimedBody
	dl := DeadlineFunc(func(time.Time) error { return nil })
	b.ReportAllocs()
	for b.Loop() {
		tb = TimedBody{}
		tb.Init(http.NoBody, dl)
		tb.Arm(0, 0)
		tb.Answered()
	}
}

// BenchmarkLeanRequestHead reads a plain request head as the fast path
// does (LeanRequestHead on what is buffered, the head's end not known
// yet; the HeaderBuf recycled after each request): the request side of
// BenchmarkLeanExchange without the response and its allocations.
func BenchmarkLeanRequestHead(b *testing.B) {
	head := []byte("GET / HTTP/1.1\r\nHost: bench.demo\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n")
	ctx := context.Background()
	var hb HeaderBuf
	r := bytes.NewReader(head)
	br := bufio.NewReaderSize(r, BufSize)
	b.ReportAllocs()
	for b.Loop() {
		r.Reset(head)
		br.Reset(r)
		br.Peek(1)
		if LeanRequestHead(ctx, br, &hb, -1) == nil {
			b.Fatal("declined")
		}
		hb.Recycle()
	}
}
