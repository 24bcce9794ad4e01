package agent

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// The HTTP/2 path through one agent, measured with a raw client and a raw
// backend (x/net/http2's Framer, header blocks encoded once) that cost
// little themselves, so that a profile of the benchmark is mostly the
// agent's: h2c GETs as h2load sends them (one connection, 10 streams in
// flight; its fields, and the backend's, indexed as h2load and Go's HTTP/2
// server do: indexedBlocks) and unary gRPC calls as fortio's ping does (16 connections, one
// call in flight each; their fields, the backend's header and trailers
// too, indexed as grpc-go's client and server do: indexedSeq).

// neverIndexed encodes fields as literals the peer does not index, so the
// block is valid on every stream of any connection.
func neverIndexed(fields ...string) []byte {
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	for i := 0; i+1 < len(fields); i += 2 {
		enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1], Sensitive: true})
	}
	return buf.Bytes()
}

// indexedBlocks encodes fields as h2load and Go's HTTP/2 server do, each
// field indexed in the peer's table: a connection's first block inserts
// them (first), every later one refers to them (later).
func indexedBlocks(fields ...string) (first, later []byte) {
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	encode := func() []byte {
		buf.Reset()
		for i := 0; i+1 < len(fields); i += 2 {
			enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
		}
		return bytes.Clone(buf.Bytes())
	}
	first = encode()
	return first, encode()
}

// indexedSeq encodes each block of seq in turn by one encoder, as a peer
// that sends several blocks per stream (a gRPC server's header and
// trailers) does, twice: the connection's first stream inserts the
// fields (the first result), every later one refers to them (the second).
func indexedSeq(seq ...[]string) [2][][]byte {
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	var out [2][][]byte
	for round := range out {
		for _, fields := range seq {
			buf.Reset()
			for i := 0; i+1 < len(fields); i += 2 {
				enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
			}
			out[round] = append(out[round], bytes.Clone(buf.Bytes()))
		}
	}
	return out
}

// grpcMessage is a length-prefixed gRPC message of n bytes.
func grpcMessage(n int) []byte {
	m := make([]byte, 5+n)
	m[4] = byte(n)
	for i := 5; i < len(m); i++ {
		m[i] = 'x'
	}
	return m
}

// startRawH2Backend answers every request when its END_STREAM arrives:
// grpc false, HEADERS (200, content-length 2) and DATA "ok"; grpc true,
// HEADERS, one gRPC message and the trailers (grpc-status 0). bdp: it
// pings as a grpc-go server does (bdpPing).
func startRawH2Backend(t testing.TB, grpc, bdp bool) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	headFirst, head := indexedBlocks(":status", "200", "content-type", "text/plain", "content-length", "2")
	body := []byte("ok")
	var trailersFirst, trailers []byte
	if grpc {
		// As grpc-go's server (fortio's backend): header and trailers
		// indexed by one encoder, the connection's one table.
		b := indexedSeq([]string{":status", "200", "content-type", "application/grpc"},
			[]string{"grpc-status", "0", "grpc-message", ""})
		headFirst, trailersFirst, head, trailers = b[0][0], b[0][1], b[1][0], b[1][1]
		body = grpcMessage(16)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		var conns sync.WaitGroup
		defer conns.Wait()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() { // rawH2BackendConn
				defer conns.Done()
				defer c.Close()
				br := bufio.NewReaderSize(c, 16<<10)
				bw := bufio.NewWriterSize(c, 16<<10)
				if _, err := io.ReadFull(br, make([]byte, len(http2.ClientPreface))); err != nil {
					return
				}
				fr := http2.NewFramer(bw, br)
				fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
				fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 30})
				fr.WriteWindowUpdate(0, 1<<30)
				recv := 0
				var ping bdpPing
				hd, tr := headFirst, trailersFirst
				for {
					f, err := fr.ReadFrame()
					if err != nil {
						return
					}
					end := false
					switch f := f.(type) {
					case *http2.SettingsFrame:
						if !f.IsAck() {
							fr.WriteSettingsAck()
						}
					case *http2.PingFrame:
						if !f.IsAck() {
							fr.WritePing(true, f.Data)
						}
						ping.acked(f)
					case *http2.MetaHeadersFrame:
						end = f.StreamEnded()
					case *http2.DataFrame:
						end = f.StreamEnded()
						recv += int(f.Length)
						if bdp && ping.send(fr, bw, &recv) != nil {
							return
						}
						if recv > 1<<20 {
							fr.WriteWindowUpdate(0, uint32(recv))
							recv = 0
						}
					}
					if end {
						id := f.Header().StreamID
						fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hd, EndHeaders: true})
						hd = head
						fr.WriteData(id, trailers == nil, body)
						if trailers != nil {
							fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: tr, EndHeaders: true, EndStream: true})
							tr = trailers
						}
					}
					if br.Buffered() == 0 && bw.Buffered() > 0 {
						if bw.Flush() != nil {
							return
						}
					}
				}
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

// bdpPing is what grpc-go's peers send for their bandwidth estimate: on
// a DATA frame with no PING outstanding, a WINDOW_UPDATE of the bytes
// received and a PING, written at once by their writer goroutine (ahead of
// the next call's frames, in a write of their own). With one call in
// flight that is once per call.
type bdpPing struct{ out bool }

func (p *bdpPing) send(fr *http2.Framer, bw *bufio.Writer, recv *int) error {
	if p.out || *recv == 0 {
		return nil
	}
	p.out = true
	fr.WriteWindowUpdate(0, uint32(*recv))
	*recv = 0
	fr.WritePing(false, [8]byte{'b', 'd', 'p'})
	return bw.Flush()
}

func (p *bdpPing) acked(f *http2.PingFrame) {
	if f.IsAck() && f.Data == [8]byte{'b', 'd', 'p'} {
		p.out = false
	}
}

// rawH2Client keeps streams requests in flight on one connection to addr
// until left runs out, as h2load does: a new request as soon as one ends.
// bdp: it pings as a grpc-go client does (bdpPing).
func rawH2Client(addr string, streams int, grpc, bdp bool, left *atomic.Int64) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Minute))
	br := bufio.NewReaderSize(c, 16<<10)
	bw := bufio.NewWriterSize(c, 16<<10)
	bw.WriteString(http2.ClientPreface)
	fr := http2.NewFramer(bw, br)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 30})
	fr.WriteWindowUpdate(0, 1<<30)
	first, head := indexedBlocks(":method", "GET", ":scheme", "http", ":path", "/", ":authority", "bench.demo", "user-agent", "bench")
	var msg []byte
	if grpc {
		// Indexed, as grpc-go's client (fortio's) sends them.
		first, head = indexedBlocks(":method", "POST", ":scheme", "http", ":path", "/fgrpc.PingServer/Ping", ":authority", "bench.demo",
			"content-type", "application/grpc", "te", "trailers", "user-agent", "bench")
		msg = grpcMessage(16)
	}
	id := uint32(1)
	send := func() bool {
		if left.Add(-1) < 0 {
			return false
		}
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndHeaders: true, EndStream: msg == nil})
		first = head
		if msg != nil {
			fr.WriteData(id, true, msg)
		}
		id += 2
		return true
	}
	var ping bdpPing
	open := 0
	for range streams {
		if send() {
			open++
		}
	}
	recv := 0
	for open > 0 {
		if br.Buffered() == 0 {
			if err := bw.Flush(); err != nil {
				return err
			}
		}
		f, err := fr.ReadFrame()
		if err != nil {
			return err
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				fr.WritePing(true, f.Data)
			}
			ping.acked(f)
		case *http2.RSTStreamFrame:
			return fmt.Errorf("stream %d reset: %v", f.StreamID, f.ErrCode)
		case *http2.GoAwayFrame:
			return fmt.Errorf("GOAWAY %v", f.ErrCode)
		case *http2.MetaHeadersFrame:
			if s := f.PseudoValue("status"); s != "" && s != "200" {
				return fmt.Errorf("status %s", s)
			}
			if grpc && f.StreamEnded() || !grpc && f.PseudoValue("status") == "" {
				ok := false
				for _, v := range f.Fields {
					ok = ok || v.Name == "grpc-status" && v.Value == "0"
				}
				if !ok {
					return fmt.Errorf("trailers %v", f.Fields)
				}
			}
			if f.StreamEnded() {
				open--
				if send() {
					open++
				}
			}
		case *http2.DataFrame:
			recv += int(f.Length)
			if bdp {
				if err := ping.send(fr, bw, &recv); err != nil {
					return err
				}
			}
			if recv > 1<<20 {
				fr.WriteWindowUpdate(0, uint32(recv))
				recv = 0
			}
			if f.StreamEnded() {
				if grpc {
					return errors.New("gRPC response without trailers")
				}
				open--
				if send() {
					open++
				}
			}
		}
	}
	return nil
}

// processSyscalls is the read and write system calls (syscr + syscw of
// /proc/self/io) the process has made so far: client, agent and backend.
func processSyscalls(b *testing.B) int64 {
	data, err := os.ReadFile("/proc/self/io")
	if err != nil {
		b.Fatal(err)
	}
	var n int64
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, ": "); ok && (k == "syscr" || k == "syscw") {
			c, _ := strconv.ParseInt(v, 10, 64)
			n += c
		}
	}
	return n
}

// BenchmarkL7H2 proxies HTTP/2 requests through one agent to a
// node-local h2c endpoint on loopback: h2c, GETs on one connection with 10
// streams in flight (h2load -c 1 -m 10); grpc, unary calls (a 16-byte
// message each way, trailers) on 16 connections, one in flight each
// (fortio's gRPC ping); grpc-bdp, those calls with client and backend
// pinging as grpc-go's do (bdpPing: a PING and a WINDOW_UPDATE each way per
// call); grpc-1conn, those calls one at a time on one connection: the
// process mostly idle between them, so its hand-offs wake threads as at a
// moderate load (bench/handoffs.sh: Ps going from idle to running). ns/op
// is wall time per request with client, agent and backend in one process;
// cpu-ns/op the process's CPU time (user and system) per request;
// rw-syscalls/op its reads and writes per request.
// Profile the agent's share with -cpuprofile and look below h2srv and
// lbTransport.
func BenchmarkL7H2(b *testing.B) {
	cp := startControl(b, b.TempDir(), "")
	apply(b, cp, httpSvcDoc("benchh2", 19600, "http2"))
	apply(b, cp, httpSvcDoc("benchgrpc", 19601, "grpc"))
	apply(b, cp, httpSvcDoc("benchgrpcbdp", 19602, "grpc"))
	a := startAgent(b, agentOpts{name: "n", site: "s1", region: "r1", vipOctet: 60, control: []string{cp.SyncAddr()},
		stateDir: b.TempDir(), workloads: []Workload{
			webWorkload("benchh2", "benchh2-1", startRawH2Backend(b, false, false)),
			webWorkload("benchgrpc", "benchgrpc-1", startRawH2Backend(b, true, false)),
			webWorkload("benchgrpcbdp", "benchgrpcbdp-1", startRawH2Backend(b, true, true)),
		}})
	waitFor(b, "endpoints", func() bool {
		return len(endpointsOf(a, "demo/benchh2")) == 1 && len(endpointsOf(a, "demo/benchgrpc")) == 1 &&
			len(endpointsOf(a, "demo/benchgrpcbdp")) == 1
	})
	for _, tc := range []struct {
		name           string
		addr           string
		conns, streams int
		grpc, bdp      bool
	}{
		{"h2c", vipOf(b, a, "demo/benchh2") + ":19600", 1, 10, false, false},
		{"grpc", vipOf(b, a, "demo/benchgrpc") + ":19601", 16, 1, true, false},
		{"grpc-bdp", vipOf(b, a, "demo/benchgrpcbdp") + ":19602", 16, 1, true, true},
		{"grpc-1conn", vipOf(b, a, "demo/benchgrpc") + ":19601", 1, 1, true, false},
	} {
		b.Run(tc.name, func(b *testing.B) {
			waitFor(b, "the VIP answering", func() bool {
				var one atomic.Int64
				one.Store(1)
				return rawH2Client(tc.addr, 1, tc.grpc, tc.bdp, &one) == nil
			})
			var left atomic.Int64
			left.Store(int64(b.N))
			errs := make(chan error, tc.conns)
			b.ReportAllocs()
			b.ResetTimer()
			cpu0, sys0 := processCPU(b), processSyscalls(b)
			var wg sync.WaitGroup
			for range tc.conns {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := rawH2Client(tc.addr, tc.streams, tc.grpc, tc.bdp, &left); err != nil {
						errs <- err
					}
				}()
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(processCPU(b)-cpu0)/float64(b.N), "cpu-ns/op")
			b.ReportMetric(float64(processSyscalls(b)-sys0)/float64(b.N), "rw-syscalls/op")
			close(errs)
			for err := range errs {
				b.Fatal(err)
			}
		})
	}
}
