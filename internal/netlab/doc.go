// Package netlab builds, for one test, a small internet of network
// namespaces with real NAT routers, so cross-site connectivity (reflexive
// addresses, hole punching, relays) is tested against the kernel's NAT
// rather than a model of it. It is test support: only tests and the bench
// program import it, never the agent (TestLeanImportGraph checks).
//
// The topology (New or Build) is a public network, one bridge, with the
// control plane and two relays on it, and four sites, each a private
// network behind a NAT router whose uplink is on the public bridge:
//
//	public 198.51.100.0/24   CP .10   Relay1 .11   Relay2 .12
//	site A .21  endpoint-independent (MASQUERADE)        192.168.1.0/24  node .2
//	site B .22  symmetric (MASQUERADE --random-fully)    192.168.1.0/24  node .2
//	site C .23  drops all outbound UDP; TCP passes       192.168.3.0/24  node .2
//	site LAN .24 endpoint-independent, two nodes         192.168.4.0/24  nodes .2 .3
//
// A and B use the same subnet and node address on purpose. No router lets
// a connection in from the public network; answers to a site's own
// traffic come back (Linux filters them by remote address and port, so
// even site A is "port-restricted"). Every namespace, veth end, bridge and
// iptables rule is created inside the lab's namespaces; nothing touches
// the host's namespace, so two labs (parallel test packages) use the same
// addresses without meeting, and no packet can leave the lab.
//
// Code runs inside a namespace three ways: a program with Netns.Command
// (`ip netns exec`), Go code with Netns.Do (a locked OS thread that joined
// the namespace), and sockets with Netns.Listen, ListenPacket and
// DialContext, which stay in the namespace whatever goroutine uses them.
// Addresses must be IP literals: a name would be resolved outside.
//
// The lab is removed when the test ends, even when it fails or panics:
// processes left in it are killed and its namespaces deleted, which
// deletes their links and rules. Namespace names are PREFIX-PID-SEQRAND-ROLE;
// Sweep(prefix) removes those of a killed run (a dead PID). New skips the
// test without root or ip/iptables, and fails it in CI.
//
// tc/netem is not available here, so ImpairUDP and ImpairTCP start a
// userspace relay that adds delay (and, for UDP, loss) on the path.
//
// Example:
//
//	func TestPunch(t *testing.T) {
//		lab := netlab.New(t)
//		// A server on the control plane's public address.
//		ln, err := lab.CP.Listen("tcp", lab.CP.Addr.String()+":0")
//		if err != nil {
//			t.Fatal(err)
//		}
//		go http.Serve(ln, handler)
//		// An HTTP client inside site A, behind its NAT.
//		a1 := lab.A.Nodes[0]
//		client := &http.Client{Transport: &http.Transport{DialContext: a1.DialContext}}
//		resp, err := client.Get("http://" + ln.Addr().String() + "/")
//		// ...
//		// An agent process inside site B, ended with the lab if the test
//		// does not end it.
//		cmd := lab.B.Nodes[0].Command(ctx, agentBin, "agent", "--config", cfg)
//		// A TCP path to relay 1 with 100 ms added each way: clients
//		// dial imp.Addr(), on the control plane's host.
//		imp, err := netlab.ImpairTCP(lab.CP, lab.CP.Addr.String()+":0",
//			lab.Relay1.Addr.String()+":443", netlab.Impairment{Delay: 100 * time.Millisecond})
//		// Pull site A's cable and plug it back.
//		lab.A.SetUplink(false)
//		lab.A.SetUplink(true)
//		// Proof that site C's router dropped a UDP packet.
//		n, err := lab.C.NAT.RuleCounter("filter", "FORWARD", netlab.RuleUDPDrop)
//	}
package netlab
