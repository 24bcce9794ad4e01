package h2srv

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// The differential test: a request header block goes to this server and
// to golang.org/x/net/http2's, each over its own in-memory connection.
// Whatever this server hands to its handler, x/net's must hand to its own,
// and as the same request (method, target, authority, header fields,
// declared trailers, body length).

// seenRequest is what a handler saw of a request.
type seenRequest struct {
	Method, Host, RequestURI, URL, Proto string
	Header                               http.Header
	Trailer                              []string
	ContentLength                        int64
}

func (s *seenRequest) String() string { return fmt.Sprintf("%+v", *s) }

// probe sends one request head (an HPACK block) over a fresh connection
// served by serveConn and reports the request its handler got, if any.
func probe(t *testing.T, serveConn func(net.Conn, http.Handler), block []byte, endStream bool) *seenRequest {
	c, sc := net.Pipe()
	defer c.Close()
	got := make(chan *seenRequest, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := &seenRequest{Method: r.Method, Host: r.Host, RequestURI: r.RequestURI, URL: r.URL.String(),
			Proto: r.Proto, Header: r.Header.Clone(), ContentLength: r.ContentLength}
		for k := range r.Trailer {
			s.Trailer = append(s.Trailer, k)
		}
		sort.Strings(s.Trailer)
		got <- s
	})
	done := make(chan struct{})
	go func() {
		defer close(done)
		serveConn(sc, h)
	}()
	defer func() { c.Close(); sc.Close(); <-done }()
	go func() {
		fr := http2.NewFramer(c, nil)
		c.Write([]byte(http2.ClientPreface))
		fr.WriteSettings()
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block, EndStream: endStream, EndHeaders: true})
	}()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	fr := http2.NewFramer(nil, c)
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			break // closed, or a frame x/net's reader refuses
		}
		if f.Header().StreamID == 1 || f.Header().Type == http2.FrameGoAway {
			if f.Header().Type == http2.FrameHeaders || f.Header().Type == http2.FrameRSTStream ||
				f.Header().Type == http2.FrameGoAway {
				break
			}
		}
	}
	select {
	case s := <-got:
		return s
	default:
		return nil
	}
}

func serveNew(c net.Conn, h http.Handler) { (&Server{Handler: h}).ServeConn(c, ConnOptions{}) }

func serveXNet(c net.Conn, h http.Handler) {
	(&http2.Server{}).ServeConn(c, &http2.ServeConnOpts{Handler: h})
}

// fieldsOf splits fuzz input into header fields: one per line, the name
// up to the first tab.
func fieldsOf(raw string) []hpack.HeaderField {
	var fs []hpack.HeaderField
	for _, line := range strings.Split(raw, "\n") {
		if line == "" {
			continue
		}
		name, value, _ := strings.Cut(line, "\t")
		fs = append(fs, hpack.HeaderField{Name: name, Value: value})
	}
	return fs
}

func encodeBlock(fs []hpack.HeaderField) []byte {
	var b bytes.Buffer
	enc := hpack.NewEncoder(&b)
	for _, f := range fs {
		enc.WriteField(f)
	}
	return b.Bytes()
}

var fuzzSeeds = []string{
	":method\tGET\n:scheme\thttp\n:authority\tsvc.demo:80\n:path\t/a?b=c\n",
	":method\tPOST\n:scheme\thttp\n:authority\tgrpc:9\n:path\t/pkg.Svc/Call\ncontent-type\tapplication/grpc\nte\ttrailers\n",
	":method\tGET\n:scheme\thttp\n:authority\tx\n:path\t/\nconnection\tkeep-alive\n",
	":method\tGET\n:scheme\thttp\n:authority\tx\n:path\t/\nte\tgzip\n",
	":method\tGET\n:scheme\thttp\n:authority\tx\n:path\t/\nhost\ty\n",
	":method\tGET\n:scheme\thttp\n:path\t/\nhost\ty\n",
	":method\tGET\n:scheme\thttp\n:path\t/\nhost\ty\nhost\ty\n",
	":method\tGET\n:scheme\thttp\n:authority\tu@x\n:path\t/\n",
	":method\tGET\n:scheme\thttp\n:authority\tx\n:path\tnoslash\n",
	":method\tOPTIONS\n:scheme\thttp\n:authority\tx\n:path\t*\n",
	":method\tCONNECT\n:authority\tx:443\n",
	":method\tCONNECT\n:authority\tx:443\n:path\t/\n",
	":method\tGET\n:authority\tx\n:path\t/\n",
	":method\tGET\n:scheme\tftp\n:authority\tx\n:path\t/\n",
	":method\tGET\n:scheme\thttp\n:authority\tx\n:path\t/\nUpper\tv\n",
	":method\tGET\n:scheme\thttp\n:authority\tx\n:path\t/\ncookie\ta=1\ncookie\tb=2\n",
	":method\tPOST\n:scheme\thttp\n:authority\tx\n:path\t/\nexpect\t100-continue\ncontent-length\t5\n",
	":method\tPOST\n:scheme\thttp\n:authority\tx\n:path\t/\ntrailer\tX-A, content-length\ncontent-length\tx\n",
	":method\tGET\n:scheme\thttp\n:authority\tx\n:path\t/\n:path\t/\n",
	":method\tGET\nx\ty\n:scheme\thttp\n:authority\tx\n:path\t/\n",
	":method\tGET\n:scheme\thttp\n:authority\tx\n:path\t/\n:protocol\twebsocket\n",
	":method\tGET\n:scheme\thttp\n:authority\tx y\n:path\t/\n",
	":method\tGET\n:scheme\thttp\n:authority\tx\n:path\t/%zz\n",
	":method\tGET\n:scheme\thttp\n:authority\tx\n:path\t/\nx\ta\x00b\n",
	":method\tGET\n:scheme\thttp\n:authority\tx\n:path\t/\ntransfer-encoding\tchunked\n",
	":method\tGET\n:scheme\thttp\n:authority\tx\n:path\t/\n:status\t200\n",
	":method\tG T\n:scheme\thttp\n:authority\tx\n:path\t/\n",
}

// FuzzRequestDifferential: this server accepts no request head that
// x/net's HTTP/2 server refuses, and reads every one it accepts as x/net's
// does.
func FuzzRequestDifferential(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add(s, true)
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, raw string, endStream bool) {
		block := encodeBlock(fieldsOf(raw))
		if len(block) > 16000 {
			return // one HEADERS frame
		}
		mine := probe(t, serveNew, block, endStream)
		theirs := probe(t, serveXNet, block, endStream)
		if mine != nil && theirs == nil {
			t.Fatalf("accepted what x/net's server refuses: %q\n%v", raw, mine)
		}
		if mine != nil && !reflect.DeepEqual(mine, theirs) {
			t.Fatalf("read differently: %q\nmine:   %v\nx/net's: %v", raw, mine, theirs)
		}
	})
}

// TestRequestValidationMatchesXNet runs the seeds with their expected
// fates, so that a probe that sees nothing (both refuse everything) fails.
func TestRequestValidationMatchesXNet(t *testing.T) {
	accepted := 0
	for _, s := range fuzzSeeds {
		block := encodeBlock(fieldsOf(s))
		mine := probe(t, serveNew, block, true)
		theirs := probe(t, serveXNet, block, true)
		if (mine == nil) != (theirs == nil) || (mine != nil && !reflect.DeepEqual(mine, theirs)) {
			t.Errorf("%q:\nmine:   %v\nx/net's: %v", s, mine, theirs)
		}
		if mine != nil {
			accepted++
		}
	}
	if accepted < 5 || accepted > len(fuzzSeeds)-10 {
		t.Errorf("%d of %d seeds accepted: the probe does not tell acceptance apart", accepted, len(fuzzSeeds))
	}
}
