package meshdns_test

import (
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/fogmesh/fogmesh/internal/meshdns"
	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/miekg/dns"
)

// TestTCPConnectionCap: a local client opening connection after connection,
// each announcing a 65535-byte query and sending nothing more, cannot make
// the server hold (and allocate a 64 KiB read buffer for) more than
// MaxTCPConnsForTest of them: those beyond are closed at once. Once the
// client lets go, TCP queries are served again.
func TestTCPConnectionCap(t *testing.T) {
	const extra = 20
	set := metrics.NewSet()
	s := serve(t, meshdns.Config{Addr: "127.0.0.1:0", Upstreams: []string{}, Metrics: set}, testServices, func(s *meshdns.Server) {
		// Long enough that only the cap can close a connection here.
		s.SetTimeoutsForTest(time.Minute, time.Minute, time.Minute, time.Second)
	})
	var closed atomic.Int32
	conns := make([]net.Conn, 0, meshdns.MaxTCPConnsForTest+extra)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for range meshdns.MaxTCPConnsForTest + extra {
		c, err := net.Dial("tcp", s.Addr())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		c.Write([]byte{0xff, 0xff})
		go func() { // awaitClose: EOF, or a reset as the server closes with our bytes unread
			io.Copy(io.Discard, c)
			closed.Add(1)
		}()
	}
	testenv.WaitFor(t, 5*time.Second, fmt.Sprintf("the server to close the %d connections past its cap", extra), func() bool {
		return closed.Load() >= extra
	})
	if n := closed.Load(); n > extra {
		t.Errorf("%d connections closed, want %d (only those past the cap)", n, extra)
	}
	if got := set.GetOrCreateCounter("fogmesh_dns_tcp_refused_total").Get(); got != extra {
		t.Errorf("fogmesh_dns_tcp_refused_total = %d, want %d", got, extra)
	}
	for _, c := range conns {
		c.Close()
	}
	// The server sees the closes asynchronously; retry until a slot is free.
	testenv.WaitFor(t, 5*time.Second, "a TCP query to be served after the attack", func() bool {
		m := new(dns.Msg)
		m.SetQuestion("hello.demo.mesh.", dns.TypeA)
		r, _, err := (&dns.Client{Net: "tcp", Timeout: time.Second}).Exchange(m, s.Addr())
		return err == nil && len(r.Answer) == 1
	})
}
