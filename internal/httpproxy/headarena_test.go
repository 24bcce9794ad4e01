package httpproxy

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// TestHeadArenaKeepsStrings: the strings of heads cut from one
// connection's arena (requests recycled one after the other, and lean
// responses) keep their bytes while later heads fill the arena's chunks:
// a kept Host, field value or raw response field is never written over.
func TestHeadArenaKeepsStrings(t *testing.T) {
	var hb, rhb HeaderBuf
	type kept struct{ host, ua, target, resp string }
	var keep []kept
	for i := range 200 {
		ua := strings.Repeat(fmt.Sprint(i%10), i%40)
		head := fmt.Sprintf("GET /r%d HTTP/1.1\r\nHost: h%d\r\nUser-Agent: u%s\r\n\r\n", i, i, ua)
		if i%50 == 7 { // larger than headArenaMax: a string of its own
			head = fmt.Sprintf("GET /r%d HTTP/1.1\r\nHost: h%d\r\nUser-Agent: u%s\r\nX-Big: %s\r\n\r\n", i, i, ua, strings.Repeat("b", headArenaMax))
		}
		br := bufio.NewReaderSize(strings.NewReader(head), BufSize)
		br.Peek(1)
		req := LeanRequest(context.Background(), br, &hb)
		if req == nil {
			t.Fatalf("declined %q", head)
		}
		ctx := WithResponseHeaderBuf(context.Background(), &rhb)
		out, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://x/", nil)
		rh := fmt.Sprintf("HTTP/1.1 200 OK\r\nX-N: n%d\r\nContent-Length: 0\r\n\r\n", i)
		pc := &poolConn{br: bufio.NewReaderSize(strings.NewReader(rh), BufSize)}
		pc.br.Peek(1)
		resp := pc.leanResponse(out)
		if resp == nil {
			t.Fatalf("declined %q", rh)
		}
		keep = append(keep, kept{req.Host, req.Header.Get("User-Agent"), req.URL.Path, ResponseField(resp, "X-N")})
		rhb.Done()
		hb.Recycle()
	}
	for i, k := range keep {
		want := kept{fmt.Sprintf("h%d", i), "u" + strings.Repeat(fmt.Sprint(i%10), i%40), fmt.Sprintf("/r%d", i), fmt.Sprintf("n%d", i)}
		if k != want {
			t.Fatalf("request %d: kept %+v, want %+v", i, k, want)
		}
	}
}
