package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/control"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/transport"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// Scoped agents (scope.go) use VIP octets 147 and 148 and client
// addresses in 127.147.250.0/24.

func nsSvcDoc(ns, name string, port int) string {
	return fmt.Sprintf(`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":%q,"namespace":%q},
	"spec":{"ports":[{"name":"tcp","port":%d}]}}`, name, ns, port)
}

// updateLog records the resources of every update an agent applies.
type updateLog struct {
	mu   sync.Mutex
	seen []string // "Type ns/name" of every resource and removal, in order
}

func (l *updateLog) observe(m *wire.Message) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range m.Resources {
		l.seen = append(l.seen, r.Type+" "+r.Name)
	}
	for _, r := range m.Removed {
		l.seen = append(l.seen, "removed "+r.Type+" "+r.Name)
	}
}

// of returns the records that mention name.
func (l *updateLog) of(name string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, s := range l.seen {
		if strings.Contains(s, name) {
			out = append(out, s)
		}
	}
	return out
}

// startObservedAgent starts an agent whose applied updates go to log.
func startObservedAgent(t *testing.T, cfg Config, log *updateLog) *Agent {
	t.Helper()
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	a.observeUpdate = log.observe
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return a
}

// dnsQuery asks the agent's DNS with a timeout above scopeWait (the agent
// may hold the query that long).
func dnsQuery(t *testing.T, a *Agent, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	c := &dns.Client{Timeout: 3 * scopeWait}
	r, _, err := c.Exchange(m, a.DNSAddr())
	if err != nil {
		t.Fatalf("dns %s: %v", name, err)
	}
	return r
}

func answerA(r *dns.Msg) string {
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			return a.A.String()
		}
	}
	return ""
}

// TestScopedAgentLearnsOnDemand: an agent scoped to shop/* holds its
// scope and its own service, never receives a change to a service outside
// it, resolves a name outside its declared scope on demand (within the
// bound: SERVFAIL otherwise) and reaches it through the mesh, gets
// NXDOMAIN for a name that does not exist, and then follows the service
// it learnt.
func TestScopedAgentLearnsOnDemand(t *testing.T) {
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, "["+nsSvcDoc("shop", "web", 19471)+","+nsSvcDoc("cloud", "orders", 19472)+","+nsSvcDoc("other", "noise", 19473)+"]")
	orders := startEcho(t, "orders", "127.0.0.1:0")
	noise := startEcho(t, "noise", "127.0.0.1:0")
	web := startEcho(t, "web", "127.0.0.1:0")
	startAgent(t, agentOpts{name: "b", site: "s1", region: "r1", vipOctet: 148, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{
			{Name: "orders-b", Service: "orders", Namespace: "cloud", Ports: []api.EndpointPort{{Name: "tcp", Port: orders.port()}}},
			{Name: "noise-b", Service: "noise", Namespace: "other", Ports: []api.EndpointPort{{Name: "tcp", Port: noise.port()}}}}})
	cfg := agentConfig(agentOpts{name: "s", site: "s1", region: "r1", vipOctet: 147, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{{Name: "web-s", Service: "web", Namespace: "shop", Ports: []api.EndpointPort{{Name: "tcp", Port: web.port()}}}}})
	cfg.Scope = []string{"shop/*"}
	var log updateLog
	s := startObservedAgent(t, cfg, &log)
	waitFor(t, "the scoped agent to hold its own service", func() bool { return len(endpointsOf(s, "shop/web")) == 1 })
	if hasService(s, "cloud/orders") || hasService(s, "other/noise") {
		t.Fatal("the scoped agent holds services outside its scope")
	}

	// A name outside the declared scope: held until it arrives.
	r := dnsQuery(t, s, "orders.cloud.mesh.", dns.TypeA)
	vip := answerA(r)
	if r.Rcode != dns.RcodeSuccess || !strings.HasPrefix(vip, "127.147.") {
		t.Fatalf("orders.cloud.mesh: rcode %s, A %q; want a VIP in 127.147/16", dns.RcodeToString[r.Rcode], vip)
	}
	mustRoundTrip(t, net.JoinHostPort(vip, "19472"), "orders: ping")
	if got := len(log.of("cloud/orders")); got == 0 {
		t.Fatal("the learnt service arrived in no update")
	}

	// Names that do not exist: NXDOMAIN, in a namespace it learnt and in
	// one nobody has.
	for _, name := range []string{"missing.cloud.mesh.", "ghost.nowhere.mesh."} {
		if r := dnsQuery(t, s, name, dns.TypeA); r.Rcode != dns.RcodeNameError {
			t.Fatalf("%s: rcode %s, want NXDOMAIN", name, dns.RcodeToString[r.Rcode])
		}
	}

	// A change outside the scope reaches nothing; one inside (a new shop
	// service) and one to the learnt service arrive.
	apply(t, cp, nsSvcDoc("other", "noise", 19483))
	apply(t, cp, nsSvcDoc("shop", "cart", 19484))
	apply(t, cp, nsSvcDoc("cloud", "orders", 19482))
	waitFor(t, "the scoped agent to get shop/cart and the change to cloud/orders", func() bool {
		return hasService(s, "shop/cart") && roundTripOK(net.JoinHostPort(vip, "19482"), "orders: ping")
	})
	if got := log.of("other/noise"); len(got) != 0 {
		t.Fatalf("the scoped agent received %v, outside its scope", got)
	}
	if got := log.of("Node b"); len(got) == 0 {
		t.Fatal("the node of the learnt endpoint never arrived")
	}
	if hasService(s, "other/noise") {
		t.Fatal("the scoped agent holds other/noise")
	}
}

func roundTripOK(addr, wantPrefix string) bool {
	got, err := roundTrip(addr)
	return err == nil && strings.HasPrefix(got, wantPrefix)
}

// oldControl is a sync proxy that hides scopeAdd from the welcome: the
// agent sees a control plane that predates it, which would end the stream
// on a second subscribe.
type oldControl struct {
	addr    string
	streams atomic.Int32
	seconds atomic.Int32 // later subscribes seen (there must be none)
}

func startOldControl(t *testing.T, upstream string) *oldControl {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &oldControl{addr: ln.Addr().String()}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", upstream)
			if err != nil {
				c.Close()
				continue
			}
			p.streams.Add(1)
			wg.Add(2)
			go func() { // agent -> control: count subscribes
				defer wg.Done()
				defer up.Close()
				r := wire.NewReader(c)
				subs := 0
				for {
					m, err := r.Read()
					if err != nil {
						return
					}
					if m.Type == wire.TypeSubscribe {
						if subs++; subs > 1 {
							p.seconds.Add(1)
						}
					}
					if wire.Write(up, m) != nil {
						return
					}
				}
			}()
			go func() { // control -> agent: no scopeAdd in welcome
				defer wg.Done()
				defer c.Close()
				r := wire.NewReader(up)
				for {
					m, err := r.Read()
					if err != nil {
						return
					}
					if m.Type == wire.TypeWelcome {
						m.Features = slices.DeleteFunc(m.Features, func(f string) bool { return f == wire.FeatureScopeAdd })
					}
					if wire.Write(c, m) != nil {
						return
					}
				}
			}()
		}
	}()
	return p
}

// TestScopedAgentWithOldControlPlane: with a control plane that does not
// widen scopes on the stream, the agent reconnects with the wider scope:
// the name resolves within the bound, and no second subscribe was sent.
func TestScopedAgentWithOldControlPlane(t *testing.T) {
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, "["+nsSvcDoc("shop", "web", 19491)+","+nsSvcDoc("cloud", "orders", 19492)+"]")
	old := startOldControl(t, cp.SyncAddr())
	cfg := agentConfig(agentOpts{name: "s", site: "s1", region: "r1", vipOctet: 147, control: []string{old.addr}, stateDir: t.TempDir()})
	cfg.Scope = []string{"shop/web"}
	var log updateLog
	s := startObservedAgent(t, cfg, &log)
	waitFor(t, "the scoped agent to hold shop/web", func() bool { return hasService(s, "shop/web") })
	if hasService(s, "cloud/orders") {
		t.Fatal("cloud/orders held before it was asked for")
	}
	r := dnsQuery(t, s, "orders.cloud.mesh.", dns.TypeA)
	if r.Rcode != dns.RcodeSuccess || !strings.HasPrefix(answerA(r), "127.147.") {
		t.Fatalf("orders.cloud.mesh through an old control plane: rcode %s, A %q", dns.RcodeToString[r.Rcode], answerA(r))
	}
	if r := dnsQuery(t, s, "missing.cloud.mesh.", dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Fatalf("missing.cloud.mesh: rcode %s, want NXDOMAIN", dns.RcodeToString[r.Rcode])
	}
	if n := old.streams.Load(); n < 2 {
		t.Fatalf("%d streams to the old control plane, want a reconnect for the wider scope", n)
	}
	if n := old.seconds.Load(); n != 0 {
		t.Fatalf("%d later subscribes sent to a control plane without scopeAdd", n)
	}
}

// TestScopedAgentVouchesForACallerOutsideItsScope: in secure mode a
// scoped destination agent does not hold the caller's endpoints, so it
// cannot tell which identities the caller's node may claim. It learns the
// claimed identity's namespace on demand and accepts the legitimate
// caller (an authorization policy that allows only that identity lets its
// connection through), and still refuses a claim the caller's node has no
// endpoint for: one of its own workloads' identities and one of a
// namespace that does not exist.
func TestScopedAgentVouchesForACallerOutsideItsScope(t *testing.T) {
	cpDir := t.TempDir()
	cp := startControlWith(t, cpDir, "", func(c *control.Config) { c.Insecure = false })
	const webID = "spiffe://fogmesh.local/ns/front/sa/web"
	applySecure(t, cp, cpDir, `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: db, namespace: shop}
spec: {ports: [{name: tcp, port: 19493}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: teller, namespace: bank}
spec: {ports: [{name: tcp, port: 19494}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: web, namespace: front}
spec: {ports: [{name: x, port: 19495}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: db-web, namespace: shop}
spec: {service: db, rules: [{from: [{principals: ["`+webID+`"]}]}]}`)
	secure := func(c *Config) {
		tok, err := cp.CreateToken(identity.TokenJoin, "s1", "", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		c.Insecure, c.JoinToken, c.WorkloadAPISocket = false, tok, "off"
		c.Scope = []string{"shop/db"}
	}
	db := startEcho(t, "db", "127.0.0.1:0")
	teller := startEcho(t, "teller", "127.0.0.1:0")
	const webIP = "127.147.250.10"
	d := startAgentWith(t, agentOpts{name: "d", site: "s1", region: "r1", vipOctet: 148, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{
			{Name: "db-d", Service: "db", Namespace: "shop", Ports: []api.EndpointPort{{Name: "tcp", Port: db.port()}}},
			{Name: "teller-d", Service: "teller", Namespace: "bank", Ports: []api.EndpointPort{{Name: "tcp", Port: teller.port()}}}}}, secure)
	c := startAgentWith(t, agentOpts{name: "c", site: "s1", region: "r1", vipOctet: 147, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{{Name: "web-c", Service: "web", Namespace: "front", Address: webIP,
			Ports: []api.EndpointPort{{Name: "x", Port: 1}}, Check: Check{Type: "none"}}}}, secure)
	if d.ident == nil || c.ident == nil {
		t.Fatal("an agent runs without a node identity")
	}
	waitFor(t, "c to learn d's db endpoint", func() bool {
		eps := endpointsOf(c, "shop/db")
		return len(eps) == 1 && eps[0].Healthy
	})
	if hasService(d, "front/web") {
		t.Fatal("d holds front/web before any caller: the test shows nothing")
	}
	r, _ := c.LookupService("shop", "db")
	got, err := echoFrom(webIP, net.JoinHostPort(r.V4.String(), "19493"))
	if err != nil || got != "db: ping" {
		t.Fatalf("the legitimate caller through a scoped destination: %q, %v", got, err)
	}
	if !hasService(d, "front/web") {
		t.Fatal("d let the caller in without learning its namespace")
	}

	// Claims c's node cannot make: refused, after asking for their
	// namespace, and counted.
	before := metricVal(d, "fogmesh_agent_authz_unvouched_source_total")
	for _, claim := range []string{"spiffe://fogmesh.local/ns/bank/sa/teller", "spiffe://fogmesh.local/ns/ghost/sa/x",
		"spiffe://fogmesh.local/ns/front/sa/admin"} {
		ctx, cancel := context.WithTimeout(context.Background(), 3*scopeWait)
		src, node := d.vouch(ctx, transport.Header{Source: "c"}, claim)
		cancel()
		if src != "" || node != "c" {
			t.Errorf("node c claiming %s: accepted as %q", claim, src)
		}
	}
	if got := metricVal(d, "fogmesh_agent_authz_unvouched_source_total") - before; got != 3 {
		t.Errorf("unvouched counter rose by %v, want 3", got)
	}
	if src, _ := d.vouch(context.Background(), transport.Header{Source: "c"}, webID); src != webID {
		t.Errorf("c's own workload identity: got %q", src)
	}
}

// TestScopedAgentFollowsMirrorDestinations: a route of a service in scope
// that mirrors to another service brings that service into the scope
// (the mirror needs its endpoints before the first request).
func TestScopedAgentFollowsMirrorDestinations(t *testing.T) {
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: web, namespace: shop}
spec: {ports: [{name: http, port: 19496, protocol: http}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: shadow, namespace: shop}
spec: {ports: [{name: http, port: 19497, protocol: http}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: unrelated, namespace: shop}
spec: {ports: [{name: http, port: 19498, protocol: http}]}
`)
	cfg := agentConfig(agentOpts{name: "s", site: "s1", region: "r1", vipOctet: 147, control: []string{cp.SyncAddr()}, stateDir: t.TempDir()})
	cfg.Scope = []string{"shop/web"}
	var log updateLog
	s := startObservedAgent(t, cfg, &log)
	waitFor(t, "shop/web", func() bool { return hasService(s, "shop/web") })
	if hasService(s, "shop/shadow") {
		t.Fatal("shop/shadow held before any route names it")
	}
	apply(t, cp, `apiVersion: fogmesh.io/v1alpha1
kind: Route
metadata: {name: web, namespace: shop}
spec:
  service: web
  rules: [{backends: [{}], mirror: {service: shadow}}]
`)
	waitFor(t, "the mirror destination to enter the scope", func() bool { return hasService(s, "shop/shadow") })
	if hasService(s, "shop/unrelated") || len(log.of("shop/unrelated")) != 0 {
		t.Fatal("a service no route names entered the scope")
	}
}

// The scope grows to maxScopeEntries; one more entry drops it: the sync
// loop is told to resubscribe, and the next stream subscribes to every
// service. Invalid entries are not taken, and a covered one adds nothing.
func TestScopeBoundDropsToEverything(t *testing.T) {
	s := newScopeSet([]string{"shop/*"}, func(string, ...any) {})
	s.add("shop/web", "Bad/Name", "a/b/c", "x")
	if sc := s.connectScope(); sc == nil || !slices.Equal(sc.Services, []string{"shop/*"}) {
		t.Fatalf("scope %v, want only shop/*", sc)
	}
	for i := 1; i < maxScopeEntries; i++ {
		s.add(fmt.Sprintf("ns%d/*", i))
	}
	if keys, resub := s.take(true); len(keys) != maxScopeEntries-1 || resub {
		t.Fatalf("take: %d keys, resubscribe %v; want %d, false", len(keys), resub, maxScopeEntries-1)
	}
	if sc := s.connectScope(); sc == nil || len(sc.Services) != maxScopeEntries {
		t.Fatal("the scope at its bound is no longer a scope")
	}
	s.add("one/more")
	if _, resub := s.take(true); !resub {
		t.Fatal("past the bound: no resubscribe")
	}
	if sc := s.connectScope(); sc != nil {
		t.Fatalf("past the bound the agent subscribes with %d entries, want everything", len(sc.Services))
	}
	if s.answeredFor("zzz/x") {
		t.Fatal("answered before any snapshot of everything")
	}
	s.answer(nil, true)
	if !s.answeredFor("zzz/x") {
		t.Fatal("a snapshot of everything answers every name")
	}
}

// Config.Scope takes "ns/name" and "ns/*" only.
func TestScopeConfigValidated(t *testing.T) {
	for _, bad := range []string{"shop", "shop/", "/web", "shop/web/x", "Shop/web", "*/*", "shop/w eb"} {
		_, err := New(Config{Node: NodeConfig{Name: "n", Site: "s", Region: "r"}, StateDir: t.TempDir(), MeshAddr: "127.0.0.1:0",
			DNSAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", VIPRange: "127.147.0.0/16", Insecure: true, Scope: []string{"ok/*", bad}})
		var ce *ConfigError
		if !errors.As(err, &ce) || !strings.Contains(err.Error(), "scope[1]") {
			t.Errorf("scope entry %q: got %v, want a config error naming scope[1]", bad, err)
		}
	}
}
