package httpproxy

import (
	"bufio"
	"strings"
	"testing"
)

// TestHeadWriter: what headWriter writes is its pieces in order, whatever
// room the writer's buffer has left (pieces that do not fit go through
// WriteString, numbers too).
func TestHeadWriter(t *testing.T) {
	pieces := [][4]string{{"GET", " ", "/a/b?c=d", " HTTP/1.1\r\nHost: "}, {"svc", "\r\n", "", ""},
		{"X-Long", ": ", strings.Repeat("v", 70), "\r\n"}, {"A", ": ", "b", "\r\n"}, {"E", ": ", "", "\r\n"}, {"Content-Length: ", "", "", ""}}
	want := ""
	for _, p := range pieces {
		want += p[0] + p[1] + p[2] + p[3]
	}
	want += "1234567890123\r\n\r\n"
	for size := 16; size <= 200; size++ {
		for pre := 0; pre < 20; pre += 7 {
			var out strings.Builder
			bw := bufio.NewWriterSize(&out, size)
			bw.WriteString(strings.Repeat("-", pre))
			hw := headWriter{bw: bw, b: bw.AvailableBuffer()}
			for _, p := range pieces {
				if p[1] == ": " && p[3] == "\r\n" {
					hw.field(p[0], p[2]) // a field line
				} else {
					hw.add(p[0], p[1], p[2], p[3])
				}
			}
			hw.addInt(1234567890123)
			hw.add("\r\n\r\n", "", "", "")
			hw.flush()
			bw.Flush()
			if got := out.String(); got != strings.Repeat("-", pre)+want {
				t.Fatalf("buffer %d, %d bytes in it: wrote %q", size, pre, got)
			}
		}
	}
}
