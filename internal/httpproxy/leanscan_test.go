package httpproxy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/textproto"
	"strings"
	"testing"

	"golang.org/x/net/http/httpguts"
)

// FuzzHeadScan holds headScan to the walks it replaced: a head it takes
// ends where headEnd (PeekHeader's) says, its request line ends at the
// first LF, each field's name is a token and its value valid
// (httpguts), canon is whether CanonicalMIMEHeaderKey keeps the name,
// and every line but the blank one is a field it recorded; and that a
// response's fields are judged from it as rawFields judges the lines.
func FuzzHeadScan(f *testing.F) {
	for _, s := range append(leanRequestSeeds, leanResponseSeeds...) {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var sc headScan
		if !sc.scan(data) {
			return
		}
		if n := headEnd(data); n != sc.n {
			t.Fatalf("%q: scan ends at %d, headEnd at %d", data, sc.n, n)
		}
		if i := bytes.IndexByte(data, '\n'); i != sc.line+1 {
			t.Fatalf("%q: request line %d bytes, first LF at %d", data, sc.line, i)
		}
		lines := strings.Split(string(data[sc.line+2:sc.n-2]), "\r\n")
		if lines[len(lines)-1] != "" || len(lines)-1 != sc.nf {
			t.Fatalf("%q: %d fields, lines %q", data, sc.nf, lines)
		}
		head := string(data)
		// A response's fields judged from the scan as rawFields judges
		// their lines (leanResponse).
		fields := head[sc.line+2 : sc.n-2]
		l1, n1, ok1 := rawFieldsOf(head, fields, &sc)
		l2, n2, ok2 := rawFields(fields)
		if l1 != l2 || n1 != n2 || ok1 != ok2 {
			t.Fatalf("%q: from the scan %d %x %t, rawFields %d %x %t", data, l1, n1, ok1, l2, n2, ok2)
		}
		for i, fl := range sc.f[:sc.nf] {
			name, value := head[fl.start:fl.colon], head[fl.colon+1:fl.end]
			if lines[i] != name+":"+value {
				t.Fatalf("%q: field %d is %q: %q, line %q", data, i, name, value, lines[i])
			}
			if !httpguts.ValidHeaderFieldName(name) || !httpguts.ValidHeaderFieldValue(value) {
				t.Fatalf("%q: took field %q: %q", data, name, value)
			}
			if canon := textproto.CanonicalMIMEHeaderKey(name) == name; canon != fl.canon {
				t.Fatalf("%q: %q canonical %t, scan says %t", data, name, canon, fl.canon)
			}
		}
	})
}

// TestLeanScanTakes: the plain heads of common clients are read lean, up
// to maxScanFields fields (a change that declined them would still pass
// the fuzz tests), and a head of more is left to http.ReadRequest.
func TestLeanScanTakes(t *testing.T) {
	many := func(n int) string {
		var b strings.Builder
		b.WriteString("GET /p?q HTTP/1.1\r\nHost: h\r\n")
		for i := 1; i < n; i++ {
			fmt.Fprintf(&b, "x-field-%d: v %d\r\n", i, i)
		}
		return b.String() + "\r\n"
	}
	for _, tc := range []struct {
		head string
		take bool
	}{
		{"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n", true}, // wrk
		{"GET /x HTTP/1.1\r\nHost: h\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n", true},
		{"GET /x HTTP/1.1\r\nHost: h\r\nUser-Agent: Go-http-client/1.1\r\nAccept-Encoding: gzip\r\n\r\n", true},
		{many(maxScanFields), true},
		{many(maxScanFields + 1), false},
	} {
		br := bufio.NewReaderSize(strings.NewReader(tc.head), BufSize)
		br.Peek(1)
		var hb HeaderBuf
		if took := LeanRequest(context.Background(), br, &hb) != nil; took != tc.take {
			t.Errorf("%q: taken %t, want %t", tc.head, took, tc.take)
		}
		if tc.take && fuzzLeanRequest(t, []byte(tc.head)) != tc.take {
			t.Errorf("%q: not taken in the fuzz test's check", tc.head)
		}
	}
}
