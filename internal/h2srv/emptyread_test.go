package h2srv

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// readSyscalls is the process's read system calls so far (syscr of
// /proc/self/io), the empty ones included.
func readSyscalls(t *testing.T) int {
	t.Helper()
	data, err := os.ReadFile("/proc/self/io")
	if err != nil {
		t.Skip("no /proc/self/io:", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "syscr: "); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	t.Skip("no syscr in /proc/self/io")
	return 0
}

// countingReader counts its reader's Reads.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	c.n++
	return c.r.Read(p)
}

// TestCallsInTurnTwoReads: a client with one call in flight (a gRPC
// client's unary calls) costs the server two reads per call: the one
// that takes the call and the one that finds the socket empty before the
// read loop parks. That second read cannot go (issue 14 tried): a short
// read does not say that no FIN or RST came behind the data
// (TestRawReadSeesCloseBehindData). The client reads a blocking
// descriptor (no empty reads of its own) and counts its reads; the rest
// of the process's are the server's.
func TestCallsInTurnTwoReads(t *testing.T) {
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok"))
	})}
	addr := serve(t, s)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	f, err := c.(*net.TCPConn).File()
	c.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Fd() // blocking mode: the client's reads wait in the kernel, none is empty
	cr := &countingReader{r: f}
	br := bufio.NewReaderSize(cr, 16<<10)
	var out bytes.Buffer
	fr := http2.NewFramer(&out, br)
	out.WriteString(http2.ClientPreface)
	fr.WriteSettings()
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, kv := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":path", "/"}, {":authority", "x"}} {
		enc.WriteField(hpack.HeaderField{Name: kv[0], Value: kv[1], Sensitive: true})
	}
	call := func(id uint32) {
		t.Helper()
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block.Bytes(), EndHeaders: true, EndStream: true})
		if _, err := f.Write(out.Bytes()); err != nil {
			t.Fatal(err)
		}
		out.Reset()
		for {
			fh, err := fr.ReadFrame()
			if err != nil {
				t.Fatal(err)
			}
			if sf, ok := fh.(*http2.SettingsFrame); ok && !sf.IsAck() {
				fr.WriteSettingsAck()
			}
			if fh.Header().StreamID == id && fh.Header().Flags.Has(http2.FlagDataEndStream) {
				return
			}
		}
	}
	call(1) // the preface and settings exchanged
	const calls = 200
	cr.n = 0
	before := readSyscalls(t)
	for i := range calls {
		call(uint32(3 + 2*i))
	}
	after := readSyscalls(t)
	server := after - before - cr.n - 1 // readSyscalls' own: a read that took the file (its EOF read is counted in after)
	if perCall := float64(server) / calls; perCall > 2.2 {
		t.Fatalf("the server made %.2f reads per call (%d in %d calls), want 2", perCall, server, calls)
	}
}
