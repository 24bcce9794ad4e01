package agent

import (
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// BenchmarkUDPFlow sends one 64-byte datagram at a time on one client flow
// and waits for its echo: straight to the workload (direct), through one
// agent to a node-local endpoint, and through two agents (a VIP on one,
// the workload behind the other, one mesh stream for the flow, insecure
// mode). It reports request/response rate and p50/p99 round trips.
//
//	go test -run '^$' -bench UDPFlow -benchtime 2000x ./internal/agent/
func BenchmarkUDPFlow(b *testing.B) {
	e := startUDPEcho(b, "e")
	cp := startControl(b, b.TempDir(), "")
	apply(b, cp, udpSvcDoc("bench", 19650, ""))
	ctl := []string{cp.SyncAddr()}
	one := startAgent(b, agentOpts{name: "one", site: "s1", region: "r1", vipOctet: 163, control: ctl, stateDir: b.TempDir(),
		workloads: []Workload{udpWorkload("bench", "e", e.port())}})
	two := startAgent(b, agentOpts{name: "two", site: "s1", region: "r1", vipOctet: 164, control: ctl, stateDir: b.TempDir()})
	waitFor(b, "both agents to know the endpoint", func() bool {
		return len(endpointsOf(one, "demo/bench")) == 1 && len(endpointsOf(two, "demo/bench")) == 1
	})
	for _, c := range []struct{ name, addr string }{
		{"direct", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(e.port())).String()},
		{"one-agent", "127.163.0.1:19650"},
		{"two-agents", "127.164.0.1:19650"},
	} {
		b.Run(c.name, func(b *testing.B) {
			cl := newUDPClient(b, "", c.addr)
			cl.mustAsk("warm", "e: warm") // the flow is open: measure datagrams, not its setup
			conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(cl.vip))
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			// A new connected socket is a new flow: open it before timing.
			conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			msg, buf := make([]byte, 64), make([]byte, 256)
			conn.Write(msg)
			if _, err := conn.Read(buf); err != nil {
				b.Fatal(err)
			}
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				start := time.Now()
				conn.SetReadDeadline(start.Add(5 * time.Second))
				if _, err := conn.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := conn.Read(buf); err != nil {
					b.Fatalf("no echo: %v", err)
				}
				lat = append(lat, time.Since(start))
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
		})
	}
}
