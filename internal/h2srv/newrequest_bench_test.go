package h2srv

import (
	"bytes"
	"net/textproto"
	"syscall"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// BenchmarkNewRequest builds the request of a gRPC client's call (fortio's
// ping: grpc-go's fields), as the read loop does for every stream.
func BenchmarkNewRequest(b *testing.B) {
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", "/fgrpc.PingServer/Ping"},
		{":authority", "127.0.0.1:8079"}, {"content-type", "application/grpc"}, {"user-agent", "grpc-go/1.71.0"},
		{"te", "trailers"}, {"grpc-timeout", "99999m"}} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	var wire bytes.Buffer
	fr := http2.NewFramer(&wire, &wire)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block.Bytes(), EndHeaders: true}); err != nil {
		b.Fatal(err)
	}
	f, err := fr.ReadFrame()
	if err != nil {
		b.Fatal(err)
	}
	mh := f.(*http2.MetaHeadersFrame)
	canon := map[string]string{}
	canonical := func(s string) string {
		if c, ok := canon[s]; ok {
			return c
		}
		c := textproto.CanonicalMIMEHeaderKey(s)
		canon[s] = c
		return c
	}
	var vals [4]string
	b.ReportAllocs()
	cpu0 := cpuTime()
	for b.Loop() {
		if _, _, err := newRequest(mh, canonical, vals[:]); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
}

// cpuTime is the process's CPU time (user and system) so far, in ns: on a
// machine shared with other work, less swayed by it than the wall time.
func cpuTime() int64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}
