package agent

import (
	"net"
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
