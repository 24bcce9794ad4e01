package agent

import (
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
)

// TestDuplexBodyCloseAfterAnswer: a client that said "Connection: close"
// gets the endpoint's whole answer before its body ended (full duplex),
// then sends no more: net/http's server closes such a connection after
// the answer whatever the body does, so the agent must not wait
// timeouts.requestBody (a minute here) for the rest before it closes;
// the connection ends at once (connEnds: within 10 s).
func TestDuplexBodyCloseAfterAnswer(t *testing.T) {
	ra := startReuseAgentAt(t, 133, "1m")
	for _, chunked := range []bool{true, false} {
		t.Run(map[bool]string{true: "chunked", false: "length"}[chunked], func(t *testing.T) {
			ra.eachPath(t, func(t *testing.T, c net.Conn, extra string) {
				br := earlyAnswer(t, c, extra+"Connection: close\r\n", chunked)
				ra.connEnds(t, c, br, "a stalled body of a connection the client closes after its answer")
			})
		})
	}
}

// TestDuplexBodyHugeRestAfterAnswer: after the endpoint's whole answer the
// client sends a chunked rest far beyond what the agent drains (256 KiB)
// and a request after it: the agent reads no more than that bound within
// timeouts.requestBody and closes the connection (no answer to the
// request behind the body), rather than reading the body for as long as
// the client sends it.
func TestDuplexBodyHugeRestAfterAnswer(t *testing.T) {
	ra := startReuseAgentAt(t, 135, "1m")
	ra.eachPath(t, func(t *testing.T, c net.Conn, extra string) {
		br := earlyAnswer(t, c, extra, true)
		chunk := fmt.Sprintf("%x\r\n%s\r\n", 32<<10, strings.Repeat("h", 32<<10))
		go func() { // the client sends on until the agent stops reading (4 MiB at most)
			for range 128 {
				if _, err := io.WriteString(c, chunk); err != nil {
					return
				}
			}
			io.WriteString(c, "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: dxr\r\n\r\n")
		}()
		ra.connEnds(t, c, br, "a chunked rest past the drain's bound")
	})
}
