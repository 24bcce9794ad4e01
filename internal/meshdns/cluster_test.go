package meshdns_test

import (
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/fogmesh/fogmesh/internal/meshdns"
	"github.com/miekg/dns"
)

// startClusterUpstream stands for the cluster's own DNS: it answers
// other.kube-system.svc.cluster.local. A 192.0.2.7 and NXDOMAIN otherwise,
// over UDP.
func startClusterUpstream(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		if q := req.Question[0]; strings.EqualFold(q.Name, "other.kube-system.svc.cluster.local.") && q.Qtype == dns.TypeA {
			rr, _ := dns.NewRR(q.Name + " 30 IN A 192.0.2.7")
			m.Answer = []dns.RR{rr}
		} else {
			m.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

func TestClusterNames(t *testing.T) {
	s := startServer(t, meshdns.Config{Upstreams: []string{startClusterUpstream(t)}}, nil)
	tests := []struct {
		name   string
		qname  string
		qtype  uint16
		rcode  int
		aa     bool
		answer []string
		extra  []string
	}{
		{name: "A", qname: "hello.demo.svc.cluster.local.", qtype: dns.TypeA, aa: true, answer: []string{"A 10.96.0.10"}},
		{name: "AAAA", qname: "hello.demo.svc.cluster.local.", qtype: dns.TypeAAAA, aa: true, answer: []string{"AAAA fd00::10"}},
		{name: "mixed case", qname: "Web.DEFAULT.Svc.Cluster.Local.", qtype: dns.TypeA, aa: true, answer: []string{"A 10.96.0.20"}},
		{
			name: "SRV targets the cluster name", qname: "_grpc._tcp.hello.demo.svc.cluster.local.", qtype: dns.TypeSRV, aa: true,
			answer: []string{"SRV 0 1 9090 hello.demo.svc.cluster.local."},
			extra:  []string{"A 10.96.0.10", "AAAA fd00::10"},
		},
		{name: "NODATA for a known service", qname: "web.default.svc.cluster.local.", qtype: dns.TypeAAAA, aa: true},
		{name: "unknown port of a known service", qname: "_nope._tcp.web.default.svc.cluster.local.", qtype: dns.TypeSRV, aa: true, rcode: dns.RcodeNameError},
		// Not ours: the cluster's DNS answers.
		{name: "unknown service forwarded", qname: "other.kube-system.svc.cluster.local.", qtype: dns.TypeA, answer: []string{"A 192.0.2.7"}},
		{name: "pod name forwarded", qname: "10-1-2-3.demo.pod.cluster.local.", qtype: dns.TypeA, rcode: dns.RcodeNameError},
		{name: "namespace only forwarded", qname: "demo.svc.cluster.local.", qtype: dns.TypeA, rcode: dns.RcodeNameError},
		{name: "too deep forwarded", qname: "a.hello.demo.svc.cluster.local.", qtype: dns.TypeA, rcode: dns.RcodeNameError},
		{name: "apex forwarded", qname: "cluster.local.", qtype: dns.TypeSOA, rcode: dns.RcodeNameError},
		// The short forms are not answered bare: hello.demo. could be a real
		// domain. The search path makes the long forms (TestSearchPath).
		{name: "bare short form forwarded", qname: "hello.demo.", qtype: dns.TypeA, rcode: dns.RcodeNameError},
		{name: "mesh zone still served", qname: "hello.demo.mesh.", qtype: dns.TypeA, aa: true, answer: []string{"A 10.96.0.10"}},
	}
	for _, network := range []string{"udp", "tcp"} {
		for _, tt := range tests {
			t.Run(network+"/"+tt.name, func(t *testing.T) {
				r := query(t, network, s.Addr(), tt.qname, tt.qtype)
				if r.Rcode != tt.rcode || r.Authoritative != tt.aa {
					t.Fatalf("rcode %s aa=%v, want %s aa=%v", dns.RcodeToString[r.Rcode], r.Authoritative, dns.RcodeToString[tt.rcode], tt.aa)
				}
				if got := rrStrings(r.Answer); !slices.Equal(got, tt.answer) {
					t.Errorf("answer\n got %q\nwant %q", got, tt.answer)
				}
				if got := rrStrings(r.Extra); !slices.Equal(got, tt.extra) {
					t.Errorf("extra\n got %q\nwant %q", got, tt.extra)
				}
				if tt.aa && len(r.Answer) == 0 {
					if got := rrStrings(r.Ns); len(got) != 1 || !strings.HasPrefix(got[0], "SOA ns.dns.cluster.local.") {
						t.Errorf("authority %q, want the cluster domain's SOA", got)
					}
				}
			})
		}
	}
}

// TestSearchPath resolves short names as a pod's stub resolver does with
// the resolv.conf kubelet writes: every search domain in turn, until one
// answers.
func TestSearchPath(t *testing.T) {
	s := startServer(t, meshdns.Config{ClusterDomain: "Edge.Example", Upstreams: []string{startClusterUpstream(t)}}, nil)
	cc, err := dns.ClientConfigFromReader(strings.NewReader(
		"nameserver 127.0.0.1\nsearch demo.svc.edge.example svc.edge.example edge.example\noptions ndots:5\n"))
	if err != nil {
		t.Fatal(err)
	}
	resolve := func(short string) (string, []string) {
		for _, fqdn := range cc.NameList(short) {
			r := query(t, "udp", s.Addr(), fqdn, dns.TypeA)
			if r.Rcode == dns.RcodeSuccess && len(r.Answer) > 0 {
				return fqdn, rrStrings(r.Answer)
			}
		}
		return "", nil
	}
	for short, want := range map[string]string{
		"hello":              "A 10.96.0.10", // same namespace
		"hello.demo":         "A 10.96.0.10",
		"hello.demo.svc":     "A 10.96.0.10",
		"web.default":        "A 10.96.0.20", // another namespace
		"web.default.svc":    "A 10.96.0.20",
		"v6only.demo.svc":    "",
		"hello.default":      "",
		"web.default.svc.cl": "",
	} {
		fqdn, got := resolve(short)
		if want == "" {
			if got != nil {
				t.Errorf("%s: resolved as %s to %q, want no answer", short, fqdn, got)
			}
			continue
		}
		if !slices.Equal(got, []string{want}) {
			t.Errorf("%s: got %q (as %s), want %q", short, got, fqdn, want)
		}
	}
	// The default cluster domain is not served when another is configured.
	if r := query(t, "udp", s.Addr(), "hello.demo.svc.cluster.local.", dns.TypeA); r.Rcode != dns.RcodeNameError || r.Authoritative {
		t.Errorf("cluster.local with cluster domain edge.example: %v", r)
	}
}

func TestClusterDomainOff(t *testing.T) {
	s := startServer(t, meshdns.Config{ClusterDomain: meshdns.NoClusterDomain, Upstreams: []string{startClusterUpstream(t)}}, nil)
	if r := query(t, "udp", s.Addr(), "hello.demo.svc.cluster.local.", dns.TypeA); r.Rcode != dns.RcodeNameError || r.Authoritative {
		t.Errorf("cluster names off: %v", r)
	}
}

func TestClusterDomainConfig(t *testing.T) {
	for _, tt := range []struct {
		cfg     meshdns.Config
		wantErr string
	}{
		{meshdns.Config{ClusterDomain: "a..b"}, "cluster domain"},
		{meshdns.Config{ClusterDomain: "."}, "cluster domain"},
		{meshdns.Config{ClusterDomain: "mesh"}, "one contains the other"},
		{meshdns.Config{Zone: "mesh.cluster.local"}, "one contains the other"},
		{meshdns.Config{Zone: "fog", ClusterDomain: "edge.fog"}, "one contains the other"},
	} {
		tt.cfg.Addr = "127.0.0.1:0"
		s, err := meshdns.New(tt.cfg, testServices)
		if err == nil {
			s.Close()
			t.Errorf("%+v: no error, want %q", tt.cfg, tt.wantErr)
			continue
		}
		if !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("%+v: %v, want %q", tt.cfg, err, tt.wantErr)
		}
	}
}

// FuzzClusterName checks that any name under the cluster domain is either
// answered from the resolver or forwarded, never crashes, and that what is
// answered is a well-formed service name.
func FuzzClusterName(f *testing.F) {
	for _, s := range []string{"hello.demo.svc.", "db-0.db.demo.svc.", "_http._tcp.web.default.svc.", "a.b.c.svc.", "svc.", ".svc.", "_x._tcp..svc.", `he\.llo.demo.svc.`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, rel string) {
		host, svc, ns, port, ok := meshdns.ParseClusterNameForTest(rel)
		if !ok {
			return
		}
		back := svc + "." + ns + ".svc."
		if host != "" {
			back = host + "." + back
		}
		if port != "" {
			back = "_" + port + "._tcp." + back
		}
		if back != rel {
			t.Fatalf("%q parsed as host=%q svc=%q ns=%q port=%q, which is %q", rel, host, svc, ns, port, back)
		}
		if _, ok := dns.IsDomainName(rel + "cluster.local."); !ok {
			t.Fatalf("%q accepted but not a domain name", rel)
		}
	})
}
