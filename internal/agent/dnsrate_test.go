package agent

import (
	"encoding/json"
	"math"
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// startTestResolver serves A 192.0.2.1 for every name over UDP on
// 127.0.0.1, a port of its own.
func startTestResolver(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg).SetReply(req)
		rr, _ := dns.NewRR(req.Question[0].Name + " 60 IN A 192.0.2.1")
		m.Answer = []dns.RR{rr}
		w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

// TestDNSForwardRateConfig: the config key dnsForwardRate reaches the
// agent's DNS server: with 1 query/s, a client flooding names outside the
// mesh is refused, while its mesh names are still answered locally.
func TestDNSForwardRateConfig(t *testing.T) {
	var c Config
	if err := json.Unmarshal([]byte(`{"dnsForwardRate": 1}`), &c); err != nil || c.DNSForwardRate != 1 {
		t.Fatalf("dnsForwardRate decoded as %d (%v), want 1", c.DNSForwardRate, err)
	}
	for _, rate := range []int{-1, 0, 1, math.MaxInt} {
		c := Config{Node: NodeConfig{Name: "n", Site: "s", Region: "r"}, StateDir: t.TempDir(), Insecure: true, DNSForwardRate: rate}
		if err := CheckConfig(c); err != nil {
			t.Errorf("dnsForwardRate %d: %v", rate, err)
		}
	}

	up := startTestResolver(t)
	a := startAgentWith(t, agentOpts{name: "dnsrate", site: "s1", region: "r1", vipOctet: 57, stateDir: t.TempDir()},
		func(c *Config) { c.Upstreams, c.DNSForwardRate = []string{up}, 1 })
	ask := func(name string) *dns.Msg {
		t.Helper()
		c := &dns.Client{Timeout: 5 * time.Second}
		r, _, err := c.Exchange(new(dns.Msg).SetQuestion(name, dns.TypeA), a.DNSAddr())
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return r
	}
	waitFor(t, "a forwarded query limited (an empty reply with TC set over UDP)", func() bool {
		r := ask("example.test.")
		if r.Rcode != dns.RcodeSuccess {
			t.Fatalf("forwarded: rcode %s, want NOERROR (an answer, or empty and truncated)", dns.RcodeToString[r.Rcode])
		}
		return r.Truncated && len(r.Answer) == 0
	})
	if r := ask("nope.demo.mesh."); r.Rcode != dns.RcodeNameError || !r.Authoritative {
		t.Fatalf("mesh name from the refused client: %v, want an authoritative NXDOMAIN", r)
	}
}
