package agent

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"
)

// startUploadBackend answers "ok" to every HTTP/1.1 request it reads once
// it has read the request's Content-Length body (discarded), with as
// little work as possible: a profile of BenchmarkL7Upload shows the agent.
func startUploadBackend(t testing.TB) int {
	return serveRawBackend(t, func(c net.Conn, resp []byte) {
		br := bufio.NewReaderSize(c, 32<<10)
		var length int64
		for {
			line, err := br.ReadSlice('\n')
			if err != nil {
				return
			}
			line = bytes.TrimRight(line, "\r\n")
			if k, v, ok := bytes.Cut(line, []byte(":")); ok && bytes.EqualFold(k, []byte("Content-Length")) {
				if length, err = strconv.ParseInt(string(bytes.TrimSpace(v)), 10, 64); err != nil {
					return
				}
			}
			if len(line) > 0 {
				continue
			}
			if _, err := br.Discard(int(length)); err != nil { // the body
				return
			}
			length = 0
			if _, err := c.Write(resp); err != nil {
				return
			}
		}
	})
}

// BenchmarkL7Upload proxies keep-alive HTTP/1.1 POSTs of 1 KiB, 16 KiB, 64 KiB and
// 4 MiB (Content-Length) bodies through one agent to a node-local endpoint
// over 8 client connections, end to end on loopback, as BenchmarkL7HTTP1
// does GETs: MB/s is body bytes per second, cpu-ns/op the CPU time of the
// whole process (client, agent, backend) per request. "whole" writes each
// request (head and body) with one Write; "paced" writes the head and the
// body's first quarter, then each further quarter after a pause of
// uploadPause, so the agent finds the body's next bytes not there yet and
// sends the rest on beside the answer's wait (full duplex: httpproxy's
// sendRest, a flush per read). The pauses lengthen ns/op, not cpu-ns/op.
func BenchmarkL7Upload(b *testing.B) {
	cp := startControl(b, b.TempDir(), "")
	apply(b, cp, httpSvcDoc("upload", 19970, "http"))
	port := startUploadBackend(b)
	startAgent(b, agentOpts{name: "n", site: "s1", region: "r1", vipOctet: 253, control: []string{cp.SyncAddr()},
		stateDir: b.TempDir(), workloads: []Workload{webWorkload("upload", "upload-1", port)}})
	addr := "127.253.0.1:19970"
	waitGet200(b, nil, "http://"+addr+"/")
	for _, size := range []struct {
		name string
		n    int
	}{{"1KiB", 1 << 10}, {"16KiB", 16 << 10}, {"64KiB", 64 << 10}, {"4MiB", 4 << 20}} {
		for _, paced := range []bool{false, true} {
			name := size.name + "/whole"
			if paced {
				name = size.name + "/paced"
			}
			b.Run(name, func(b *testing.B) { benchUpload(b, addr, size.n, paced) })
		}
	}
}

// uploadPause is the pause between the parts of a paced upload.
const uploadPause = 100 * time.Microsecond

func benchUpload(b *testing.B, addr string, size int, paced bool) {
	const conns = 8
	msg := fmt.Appendf(nil, "POST /up HTTP/1.1\r\nHost: upload.demo\r\nUser-Agent: bench\r\nContent-Length: %d\r\n\r\n", size)
	head := len(msg)
	msg = append(msg, bytes.Repeat([]byte("0123456789abcdef"), size/16)...)
	// parts: where each Write of a request ends (one: the whole request).
	parts := []int{len(msg)}
	if paced {
		q := size / 4
		parts = []int{head + q, head + 2*q, head + 3*q, len(msg)}
	}
	b.SetBytes(int64(size))
	b.ReportAllocs()
	runH1Clients(b, addr, conns, func(c net.Conn) error {
		from := 0
		for i, to := range parts {
			if i > 0 {
				time.Sleep(uploadPause) // a client that sends its body in pieces (paced)
			}
			if _, err := c.Write(msg[from:to]); err != nil {
				return err
			}
			from = to
		}
		return nil
	})
}
