package control

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/audit"
	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// startPlane starts an insecure control plane with tweak's last word on
// its Config.
func startPlane(t *testing.T, tweak func(*Config)) *Server {
	t.Helper()
	cfg := Config{StateDir: t.TempDir(), AdminAddr: "127.0.0.1:0", SyncAddr: "127.0.0.1:0",
		HeartbeatInterval: 200 * time.Millisecond, Insecure: true}
	if tweak != nil {
		tweak(&cfg)
	}
	return serveControl(t, cfg)
}

// inRegion configures a regional plane of region linked to upstreams.
func inRegion(region string, upstreams ...string) func(*Config) {
	return func(c *Config) {
		c.Mode, c.Region, c.Upstreams = ModeRegional, region, upstreams
	}
}

// held returns the object s stores under key, or nil.
func held(s *Server, key string) api.Object {
	objs, _, err := s.reg.list("")
	if err != nil {
		return nil
	}
	for _, o := range objs {
		if api.ObjectKey(o) == key {
			return o
		}
	}
	return nil
}

// waitHeld waits until s holds key owned by owner and cond (if set) holds.
func waitHeld(t *testing.T, s *Server, key, owner string, cond func(api.Object) bool) {
	t.Helper()
	testenv.WaitFor(t, 10*time.Second, fmt.Sprintf("%s to hold %s owned by %q", s.cfg.Name+"@"+s.cfg.Region, key, owner), func() bool {
		o := held(s, key)
		return o != nil && o.GetMeta().Owner == owner && (cond == nil || cond(o))
	})
}

func waitGone(t *testing.T, s *Server, key string) {
	t.Helper()
	testenv.WaitFor(t, 10*time.Second, fmt.Sprintf("%s to drop %s", s.cfg.Region, key), func() bool { return held(s, key) == nil })
}

func svcDoc(name, export string, port int) string {
	return fmt.Sprintf(`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":%q,"namespace":"demo"},
	"spec":{"ports":[{"name":"tcp","port":%d}]%s}}`, name, port, export)
}

func mustApply(t *testing.T, s *Server, doc string) {
	t.Helper()
	if code, body := applyDoc(t, s, doc); code != 200 {
		t.Fatalf("apply: %d %s", code, body)
	}
}

// regionAgent is a raw agent of a region: a node and local endpoints.
func regionAgent(t *testing.T, s *Server, node, region string, eps ...string) *agentConn {
	t.Helper()
	c, err := net.Dial("tcp", s.SyncAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	a := &agentConn{t: t, c: c, r: wire.NewReader(c)}
	a.send(&wire.Message{Type: wire.TypeHello, Protocol: wire.ProtocolVersion, Capabilities: []string{wire.CapPolicy2}, Node: &api.Node{
		Meta: api.Meta{Name: node}, Spec: api.NodeSpec{Site: "s1", Region: region, MeshAddress: "127.0.0.1:7072"}}})
	if m := a.recv(); m.Type != wire.TypeWelcome {
		t.Fatalf("want welcome, got %+v", m)
	}
	a.local(eps...)
	return a
}

// local sends the endpoints the agent owns: "service/name" each.
func (a *agentConn) local(eps ...string) {
	var out []api.Endpoint
	for _, e := range eps {
		svc, name, _ := strings.Cut(e, "/")
		out = append(out, api.Endpoint{Meta: api.Meta{Name: name, Namespace: "demo"}, Spec: api.EndpointSpec{
			Service: svc, ServiceAccount: svc, Address: "127.0.0.1", Ports: []api.EndpointPort{{Name: "tcp", Port: 9000}}}})
	}
	a.send(&wire.Message{Type: wire.TypeLocal, Endpoints: out})
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	code, body := doReq(t, "GET", url, "")
	if code != 200 || json.Unmarshal([]byte(body), v) != nil {
		t.Fatalf("GET %s: %d %s", url, code, body)
	}
}

func doReq(t *testing.T, method, url, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestRegionsReplicateOwnedObjectsAndExports: a region's services, nodes
// and endpoints go up to the global plane, which keeps them owned by the
// region and passes on only what is exported; global objects reach every
// region; a write to another plane's object is refused naming its owner.
// The east plane fails over from a dead upstream to the live one.
func TestRegionsReplicateOwnedObjectsAndExports(t *testing.T) {
	g := startPlane(t, nil)
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close() // refused: the east plane must go on to the next upstream
	east := startPlane(t, func(c *Config) { inRegion("east", deadAddr, g.SyncAddr())(c); c.VIPIndexMin, c.VIPIndexMax = 100, 199 })
	west := startPlane(t, func(c *Config) { inRegion("west", g.SyncAddr())(c); c.VIPIndexMin, c.VIPIndexMax = 200, 299 })

	mustApply(t, east, svcDoc("web", `,"export":["west"]`, 80))
	mustApply(t, east, svcDoc("private", "", 81))
	mustApply(t, g, svcDoc("api", "", 82))
	regionAgent(t, east, "e1", "east", "web/web-e1", "private/private-e1")

	waitHeld(t, g, "Service/demo/web", "east", nil)
	waitHeld(t, g, "Service/demo/private", "east", nil)
	waitHeld(t, g, "Endpoint/demo/private-e1", "east", nil)
	waitHeld(t, g, "Node/e1", "east", nil)
	waitHeld(t, west, "Service/demo/web", "east", func(o api.Object) bool { return o.(*api.Service).Status.VIPIndex == 100 })
	waitHeld(t, west, "Endpoint/demo/web-e1", "east", nil)
	waitHeld(t, west, "Node/e1", "east", nil)
	waitHeld(t, west, "Service/demo/api", "", nil)
	waitHeld(t, east, "Service/demo/api", "", nil)
	var er RegionsResponse
	getJSON(t, "http://"+east.AdminAddr()+"/v1/regions", &er)
	if er.Mode != ModeRegional || er.Region != "east" || er.Upstream == nil || !er.Upstream.Connected || er.Upstream.Upstream != g.SyncAddr() {
		t.Fatalf("east /v1/regions %+v, want connected to %s", er, g.SyncAddr())
	}
	testenv.WaitFor(t, 10*time.Second, "the global plane to list both regions", func() bool {
		var gr RegionsResponse
		getJSON(t, "http://"+g.AdminAddr()+"/v1/regions", &gr)
		return gr.Mode == ModeGlobal && len(gr.Links) == 2 && gr.Links[0].Region == "east" && gr.Links[1].Region == "west"
	})
	// What is not exported stays out of west, and west's own service
	// allocates from its own VIP block.
	mustApply(t, west, svcDoc("shop", "", 83))
	waitHeld(t, g, "Service/demo/shop", "west", func(o api.Object) bool { return o.(*api.Service).Status.VIPIndex == 200 })
	for _, key := range []string{"Service/demo/private", "Endpoint/demo/private-e1"} {
		if held(west, key) != nil {
			t.Fatalf("west holds %s, which east did not export", key)
		}
	}
	if held(east, "Service/demo/shop") != nil {
		t.Fatal("east holds west's unexported shop")
	}

	// Writes to another plane's object are refused, naming the owner.
	for _, c := range []struct {
		s     *Server
		doc   string
		owner string
	}{
		{west, svcDoc("web", "", 99), "region east"},
		{g, svcDoc("web", "", 99), "region east"},
		{east, svcDoc("api", "", 99), "the global control plane"},
	} {
		code, body := applyDoc(t, c.s, c.doc)
		if code != http.StatusConflict || !strings.Contains(body, c.owner) {
			t.Fatalf("apply to an object of %s: %d %s", c.owner, code, body)
		}
	}
	if code, body := doReq(t, "DELETE", "http://"+g.AdminAddr()+"/v1/services/demo/web", ""); code != http.StatusConflict || !strings.Contains(body, "region east") {
		t.Fatalf("global delete of east's service: %d %s", code, body)
	}

	// A regional plane serves its own region's agents only.
	c, err := net.Dial("tcp", west.SyncAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	stray := &agentConn{t: t, c: c, r: wire.NewReader(c)}
	stray.send(&wire.Message{Type: wire.TypeHello, Protocol: wire.ProtocolVersion, Capabilities: []string{wire.CapPolicy2}, Node: &api.Node{
		Meta: api.Meta{Name: "e9"}, Spec: api.NodeSpec{Site: "s1", Region: "east", MeshAddress: "127.0.0.1:7072"}}})
	if m := stray.recv(); m.Type != wire.TypeError || !strings.Contains(m.Error, "serves region west") {
		t.Fatalf("east's agent at west's plane: %+v", m)
	}

	// Exporting no more takes the service and its endpoints out of west.
	mustApply(t, east, svcDoc("web", "", 80))
	waitGone(t, west, "Service/demo/web")
	waitGone(t, west, "Endpoint/demo/web-e1")
	waitGone(t, west, "Node/e1")
	waitHeld(t, g, "Service/demo/web", "east", func(o api.Object) bool { return len(o.(*api.Service).Spec.Export) == 0 })
}

// cutProxy forwards TCP to target until cut: then it closes every
// connection and refuses new ones, as a link that went down.
type cutProxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	cut   bool
	conns []net.Conn
}

func startCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); p.setCut(true); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			if p.cut {
				p.mu.Unlock()
				c.Close()
				continue
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				p.mu.Unlock()
				c.Close()
				continue
			}
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			wg.Add(2)
			go func() { defer wg.Done(); io.Copy(up, c); up.Close() }()
			go func() { defer wg.Done(); io.Copy(c, up); c.Close() }()
		}
	}()
	return p
}

func (p *cutProxy) addr() string { return p.ln.Addr().String() }

func (p *cutProxy) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	if cut {
		for _, c := range p.conns {
			c.Close()
		}
		p.conns = nil
	}
}

// ownRecords returns the records of s's own audit chain.
func ownRecords(s *Server) []audit.Record {
	recs, _ := s.audit.log.ReadFrom(1, 1000)
	return recs
}

func hasConflict(s *Server, key string) bool {
	for _, r := range ownRecords(s) {
		if r.Kind == auditKindReplication && r.Action == "conflict" && r.Object == key {
			return true
		}
	}
	return false
}

// TestRegionPartitionReconciles: the link between east and the global plane
// is cut; both sides keep taking writes to what they own (admin applies,
// deletes, an agent's endpoints, a new node), and refuse writes to what the
// other owns; when the link returns both converge with nothing lost, east
// resubscribes from the versions it holds (no second snapshot), and a name
// both created while apart keeps the global copy, the dropped one audited
// on both sides.
func TestRegionPartitionReconciles(t *testing.T) {
	g := startPlane(t, nil)
	proxy := startCutProxy(t, g.SyncAddr())
	east := startPlane(t, func(c *Config) { inRegion("east", proxy.addr())(c); c.VIPIndexMin, c.VIPIndexMax = 100, 199 })

	mustApply(t, east, svcDoc("web", `,"export":["*"]`, 80))
	mustApply(t, east, svcDoc("old-east", "", 81))
	mustApply(t, g, svcDoc("old-global", "", 82))
	mustApply(t, g, svcDoc("api", "", 83))
	a := regionAgent(t, east, "e1", "east", "web/web-1")
	waitHeld(t, g, "Endpoint/demo/web-1", "east", nil)
	waitHeld(t, g, "Service/demo/old-east", "east", nil)
	waitHeld(t, east, "Service/demo/old-global", "", nil)
	waitHeld(t, east, "Service/demo/api", "", nil)
	// Counted after the snapshot is stored: the objects can show first.
	testenv.WaitFor(t, 10*time.Second, "east to count its first snapshot", func() bool { return east.up.snapshots() == 1 })

	proxy.setCut(true)
	testenv.WaitFor(t, 10*time.Second, "east to see the link down", func() bool { return !east.Upstream().Connected })

	// East, cut off: its own objects change, the global ones stay refused.
	mustApply(t, east, svcDoc("web", `,"export":["*"]`, 8080))
	mustApply(t, east, svcDoc("during-east", "", 84))
	mustApply(t, east, svcDoc("dup", "", 85))
	if code, body := doReq(t, "DELETE", "http://"+east.AdminAddr()+"/v1/services/demo/old-east", ""); code != 200 {
		t.Fatal(code, body)
	}
	a.local("web/web-1", "web/web-2")
	regionAgent(t, east, "e2", "east", "during-east/during-e2")
	if code, body := applyDoc(t, east, svcDoc("api", "", 99)); code != http.StatusConflict || !strings.Contains(body, "global control plane") {
		t.Fatalf("east changed a global object while cut off: %d %s", code, body)
	}
	waitHeld(t, east, "Endpoint/demo/web-2", "east", nil)

	// The global plane, cut off from east: the same.
	mustApply(t, g, svcDoc("during-global", "", 86))
	mustApply(t, g, svcDoc("api", "", 8383))
	mustApply(t, g, svcDoc("dup", "", 87))
	if code, body := doReq(t, "DELETE", "http://"+g.AdminAddr()+"/v1/services/demo/old-global", ""); code != 200 {
		t.Fatal(code, body)
	}
	if code, body := applyDoc(t, g, svcDoc("web", "", 99)); code != http.StatusConflict || !strings.Contains(body, "region east") {
		t.Fatalf("global changed east's object while cut off: %d %s", code, body)
	}

	proxy.setCut(false)
	port := func(p int) func(api.Object) bool {
		return func(o api.Object) bool { return o.(*api.Service).Spec.Ports[0].Port == p }
	}
	// Everything east did is at the global plane…
	waitHeld(t, g, "Service/demo/web", "east", port(8080))
	waitHeld(t, g, "Service/demo/during-east", "east", nil)
	waitHeld(t, g, "Endpoint/demo/web-2", "east", nil)
	waitHeld(t, g, "Endpoint/demo/during-e2", "east", nil)
	waitHeld(t, g, "Node/e2", "east", nil)
	waitGone(t, g, "Service/demo/old-east")
	// …and everything the global plane did is in east.
	waitHeld(t, east, "Service/demo/during-global", "", nil)
	waitHeld(t, east, "Service/demo/api", "", port(8383))
	waitGone(t, east, "Service/demo/old-global")
	// Both created dup while apart: the global copy wins everywhere, and
	// the dropped copy is in the audit chain of the plane that dropped it
	// (docs/regions.md): east's always, which replaces its own copy with
	// the global one; the global plane's only when east's upload reached it
	// before the global copy reached east (after that east no longer holds
	// its copy to send: a CI run saw that order).
	waitHeld(t, east, "Service/demo/dup", "", port(87))
	waitHeld(t, g, "Service/demo/dup", "", port(87))
	testenv.WaitFor(t, 10*time.Second, "the conflict in east's audit chain", func() bool {
		return hasConflict(east, "Service/demo/dup")
	})
	// The resubscribe named what east held: a delta, not a snapshot.
	testenv.WaitFor(t, 10*time.Second, "east to be connected again", func() bool { return east.Upstream().Connected })
	if n := east.up.snapshots(); n != 1 {
		t.Fatalf("%d snapshots after the cut, want 1 (a delta resumes)", n)
	}
	// East's agents keep what they registered while cut off.
	if held(east, "Endpoint/demo/web-2") == nil || held(east, "Service/demo/during-east") == nil {
		t.Fatal("east lost its own changes")
	}
}

// fakeUpstream is a global control plane that sends what a test scripts:
// it welcomes each link (store "fake"), reads the subscribe, sends a good
// snapshot, then the frames of bad.
type fakeUpstream struct {
	ln   net.Listener
	subs chan *wire.Message // every subscribe received
	acks chan *wire.Message // acks and nacks received
}

func startFakeUpstream(t *testing.T, script func(links int, w io.Writer)) *fakeUpstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeUpstream{ln: ln, subs: make(chan *wire.Message, 16), acks: make(chan *wire.Message, 64)}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for links := 1; ; links++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				r := wire.NewReader(c)
				if _, err := r.Read(); err != nil { // hello
					return
				}
				wire.Write(c, &wire.Message{Type: wire.TypeWelcome, StoreID: "fake", Version: 1, HeartbeatMillis: 200})
				sub, err := r.Read()
				if err != nil {
					return
				}
				f.subs <- sub
				wg.Add(1)
				go func() { defer wg.Done(); script(links, c) }()
				for {
					c.SetReadDeadline(time.Now().Add(5 * time.Second))
					m, err := r.Read()
					if err != nil {
						return
					}
					switch m.Type {
					case wire.TypeHeartbeat:
						wire.Write(c, &wire.Message{Type: wire.TypeHeartbeat})
					case wire.TypeAck, wire.TypeNack:
						select {
						case f.acks <- m:
						default:
						}
					}
				}
			}()
		}
	}()
	return f
}

func res(t *testing.T, o api.Object) wire.Resource {
	r, err := wire.NewResource(o)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func globalSvc(name string, port int, version uint64) *api.Service {
	s := &api.Service{APIVersion: api.APIVersion, Kind: api.KindService, Meta: api.Meta{Name: name, Namespace: "demo", Version: version},
		Spec: api.ServiceSpec{Ports: []api.ServicePort{{Name: "tcp", Port: port, Protocol: "tcp"}}}}
	if err := s.Validate(); err != nil {
		panic(err)
	}
	return s
}

// TestBadUpstreamUpdatesKeepLastGoodState: an upstream that sends a
// malformed, duplicated or out-of-order update, or one claiming an object
// of the region, gets a NACK naming the problem (an unreadable frame ends
// the link); the regional plane keeps serving its last good state
// untouched, and its next link starts over from a snapshot (subscribe
// without known version) or, after an unreadable frame, resumes from the
// last good version.
func TestBadUpstreamUpdatesKeepLastGoodState(t *testing.T) {
	good := &wire.Message{Type: wire.TypeUpdate, StoreID: "fake", Version: 10, Full: true}
	good.Resources = []wire.Resource{res(t, globalSvc("api", 80, 5))}
	delta := &wire.Message{Type: wire.TypeUpdate, StoreID: "fake", Version: 12, Resources: []wire.Resource{res(t, globalSvc("api", 81, 12))}}
	badBody := res(t, globalSvc("api", 82, 13))
	badBody.Body = json.RawMessage(`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"api","namespace":"demo"},"spec":{"ports":[]}}`)
	owned := globalSvc("mine", 83, 13)
	owned.Meta.Owner = "east"
	for _, c := range []struct {
		name string
		bad  []*wire.Message // after good and delta
		raw  []byte          // or raw bytes
		want string          // in the NACK
	}{
		{name: "invalid resource", bad: []*wire.Message{{Type: wire.TypeUpdate, StoreID: "fake", Version: 13, Resources: []wire.Resource{badBody}}}, want: "spec.ports"},
		{name: "out of order", bad: []*wire.Message{{Type: wire.TypeUpdate, StoreID: "fake", Version: 11, Resources: []wire.Resource{res(t, globalSvc("api", 82, 11))}}}, want: "out of order"},
		{name: "owned by the region", bad: []*wire.Message{{Type: wire.TypeUpdate, StoreID: "fake", Version: 13, Resources: []wire.Resource{res(t, owned)}}}, want: "owned by this region"},
		{name: "other store", bad: []*wire.Message{{Type: wire.TypeUpdate, StoreID: "other", Version: 13, Resources: []wire.Resource{res(t, globalSvc("api", 82, 13))}}}, want: "store"},
		{name: "twice in one update", bad: []*wire.Message{{Type: wire.TypeUpdate, StoreID: "fake", Version: 13, Resources: []wire.Resource{res(t, globalSvc("x", 82, 13)), res(t, globalSvc("x", 83, 13))}}}, want: "twice"},
		{name: "chunk out of order", bad: []*wire.Message{{Type: wire.TypeUpdate, StoreID: "fake", Version: 13, Chunk: 2, Chunks: 2,
			Resources: []wire.Resource{res(t, globalSvc("x", 82, 13))}}}, want: "without the chunks before it"},
		{name: "update between chunks", bad: []*wire.Message{
			{Type: wire.TypeUpdate, StoreID: "fake", Version: 13, Chunk: 1, Chunks: 2, Resources: []wire.Resource{res(t, globalSvc("x", 82, 13))}},
			{Type: wire.TypeUpdate, StoreID: "fake", Version: 14, Resources: []wire.Resource{res(t, globalSvc("mine", 83, 14))}}}, want: "sent whole while chunk 2 of 2"},
		{name: "chunks of two updates", bad: []*wire.Message{
			{Type: wire.TypeUpdate, StoreID: "fake", Version: 13, Chunk: 1, Chunks: 2, Resources: []wire.Resource{res(t, globalSvc("x", 82, 13))}},
			{Type: wire.TypeUpdate, StoreID: "fake", Version: 14, Chunk: 2, Chunks: 2, Resources: []wire.Resource{res(t, globalSvc("mine", 83, 14))}}}, want: "while update 13 is incomplete"},
		{name: "chunks of two nonces", bad: []*wire.Message{
			{Type: wire.TypeUpdate, StoreID: "fake", Nonce: "a", Version: 13, Chunk: 1, Chunks: 2, Resources: []wire.Resource{res(t, globalSvc("x", 82, 13))}},
			{Type: wire.TypeUpdate, StoreID: "fake", Nonce: "b", Version: 13, Chunk: 2, Chunks: 2, Resources: []wire.Resource{res(t, globalSvc("y", 83, 13))}}},
			want: `of update 13 (nonce "b") while update 13 (nonce "a") is incomplete`},
		{name: "not json", raw: []byte{0, 0, 0, 3, '{', '{', '{'}},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := startFakeUpstream(t, func(links int, w io.Writer) {
				if links > 1 {
					return // later links: nothing, the test checks their subscribe
				}
				wire.Write(w, good)
				wire.Write(w, delta)
				wire.Write(w, delta) // a duplicate: skipped, acked
				for _, m := range c.bad {
					wire.Write(w, m)
				}
				if c.raw != nil {
					w.Write(c.raw)
				}
			})
			east := startPlane(t, inRegion("east", f.ln.Addr().String()))
			mustApply(t, east, svcDoc("local", "", 90))
			if sub := <-f.subs; sub.KnownVersion != 0 || sub.Scope == nil || sub.Scope.Region != "east" {
				t.Fatalf("first subscribe %+v", sub)
			}
			var nack *wire.Message
			acks := 0
			testenv.WaitFor(t, 10*time.Second, "acks and a nack", func() bool {
				select {
				case m := <-f.acks:
					if m.Type == wire.TypeNack {
						nack = m
					} else {
						acks++
					}
				default:
				}
				return acks >= 3 && (nack != nil || c.raw != nil)
			})
			if c.want != "" && !strings.Contains(nack.Error, c.want) {
				t.Fatalf("nack %q, want it to say %q", nack.Error, c.want)
			}
			// The next link starts over from a snapshot after a refused
			// update; after an unreadable frame (nothing applied) it
			// resumes from the last good version.
			wantKnown, wantHeld := uint64(0), 0
			if c.raw != nil {
				wantKnown, wantHeld = 12, 1
			}
			select {
			case sub := <-f.subs:
				if sub.KnownVersion != wantKnown || len(sub.Resources) != wantHeld {
					t.Fatalf("resubscribe after a bad update: known %d, %d held; want %d, %d", sub.KnownVersion, len(sub.Resources), wantKnown, wantHeld)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("no resubscribe")
			}
			// The last good state serves, whole.
			got := held(east, "Service/demo/api")
			if got == nil || got.(*api.Service).Spec.Ports[0].Port != 81 || got.GetMeta().Owner != "" {
				t.Fatalf("after a bad update east holds %+v", got)
			}
			if held(east, "Service/demo/x") != nil || held(east, "Service/demo/y") != nil || held(east, "Service/demo/mine") != nil {
				t.Fatal("part of a refused update was stored")
			}
			if o := held(east, "Service/demo/local"); o == nil || o.GetMeta().Owner != "east" {
				t.Fatalf("east's own service: %+v", o)
			}
		})
	}
}

// TestBadRegionUpdatesAreRefused: a region that sends another owner's
// object, a malformed one, or an out-of-order update gets an error naming
// it; the global plane stores nothing of it and keeps the region's last
// good state.
func TestBadRegionUpdatesAreRefused(t *testing.T) {
	g := startPlane(t, nil)
	north := startPlane(t, inRegion("north", g.SyncAddr()))
	// Hellos that cannot start a link: an invalid region, a link to a
	// regional plane.
	for _, c := range []struct {
		s      *Server
		region string
		want   string
	}{
		{g, "Bad_Region", "not a DNS label"},
		{north, "west", "link region west to the global control plane"},
	} {
		conn, err := net.Dial("tcp", c.s.SyncAddr())
		if err != nil {
			t.Fatal(err)
		}
		a := &agentConn{t: t, c: conn, r: wire.NewReader(conn)}
		a.send(&wire.Message{Type: wire.TypeHello, Protocol: wire.ProtocolVersion, Capabilities: []string{wire.CapRegion}, Scope: &wire.Scope{Region: c.region}})
		if m := a.recv(); m.Type != wire.TypeError || !strings.Contains(m.Error, c.want) {
			t.Fatalf("region hello %q: %+v, want an error saying %q", c.region, m, c.want)
		}
		conn.Close()
	}
	mine := globalSvc("web", 80, 3)
	mine.Meta.Owner = "east"
	theirs := globalSvc("other", 81, 4)
	theirs.Meta.Owner = "west"
	mine2 := globalSvc("web", 82, 5)
	mine2.Meta.Owner = "east"
	bad := res(t, mine2)
	bad.Body = json.RawMessage(`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"web","namespace":"demo","owner":"east"},"spec":{"ports":[{"port":0}]}}`)
	for _, c := range []struct {
		name string
		m    *wire.Message
		want string
	}{
		{"another region's object", &wire.Message{Type: wire.TypeUpdate, Version: 6, Resources: []wire.Resource{res(t, mine2), res(t, theirs)}}, `owner "west"`},
		{"invalid resource", &wire.Message{Type: wire.TypeUpdate, Version: 6, Resources: []wire.Resource{bad}}, "spec.ports"},
		{"out of order", &wire.Message{Type: wire.TypeUpdate, Version: 2, Resources: []wire.Resource{res(t, mine2)}}, "out of order"},
		{"bad removed name", &wire.Message{Type: wire.TypeUpdate, Version: 6, Removed: []wire.ResourceRef{{Type: api.KindService, Name: "../x"}}}, "not a valid name"},
		{"unknown frame", &wire.Message{Type: wire.TypeRenew}, "unexpected"},
	} {
		t.Run(c.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", g.SyncAddr())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			a := &agentConn{t: t, c: conn, r: wire.NewReader(conn)}
			a.send(&wire.Message{Type: wire.TypeHello, Protocol: wire.ProtocolVersion, Capabilities: []string{wire.CapRegion}, Scope: &wire.Scope{Region: "east"}})
			if m := a.recv(); m.Type != wire.TypeWelcome {
				t.Fatalf("welcome: %+v", m)
			}
			a.send(&wire.Message{Type: wire.TypeSubscribe})
			a.send(&wire.Message{Type: wire.TypeUpdate, Full: true, Version: 3, Resources: []wire.Resource{res(t, mine)}})
			a.send(c.m)
			var errMsg string
			for errMsg == "" {
				m := a.recv()
				if m.Type == wire.TypeError {
					errMsg = m.Error
				}
			}
			if !strings.Contains(errMsg, c.want) {
				t.Fatalf("error %q, want %q", errMsg, c.want)
			}
			o := held(g, "Service/demo/web")
			if o == nil || o.GetMeta().Owner != "east" || o.(*api.Service).Spec.Ports[0].Port != 80 {
				t.Fatalf("global holds %+v", o)
			}
			if held(g, "Service/demo/other") != nil {
				t.Fatal("a refused update was stored in part")
			}
		})
	}
}

// FuzzDecodeReplicaUpdate: no frame crashes the check, and what it accepts
// is whole: each resource valid, named once, with the owner allowed.
func FuzzDecodeReplicaUpdate(f *testing.F) {
	svc := globalSvc("api", 80, 5)
	b, _ := json.Marshal(&wire.Message{Type: wire.TypeUpdate, Version: 9, Resources: []wire.Resource{{ResourceRef: wire.RefOf(svc), Version: 5, Body: mustJSON(svc)}}})
	f.Add(b)
	f.Add([]byte(`{"type":"update","version":3,"removed":[{"type":"Node","name":"n1"},{"type":"Endpoint","name":"demo/e"}]}`))
	f.Add([]byte(`{"type":"update","version":3,"full":true,"removed":[{"type":"Node","name":"n1"}]}`))
	f.Add([]byte(`{"type":"update","version":3,"resources":[{"type":"Service","name":"demo/a","version":1,"body":{"kind":"Node"}}]}`))
	f.Add([]byte(`{"type":"update","version":1,"chunk":1,"chunks":2}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		m, err := wire.Decode(body)
		if err != nil {
			return
		}
		u, err := decodeReplicaUpdate(m, func(owner string) error {
			if owner == "east" {
				return fmt.Errorf("own")
			}
			return nil
		})
		if err != nil {
			return
		}
		seen := map[string]bool{}
		for _, o := range u.puts {
			key := api.ObjectKey(o)
			if seen[key] || o.GetMeta().Owner == "east" {
				t.Fatalf("accepted %s twice or with a refused owner", key)
			}
			seen[key] = true
		}
		for _, k := range u.removed {
			if seen[k] || !strings.Contains(k, "/") {
				t.Fatalf("accepted removal %q", k)
			}
			seen[k] = true
		}
	})
}
