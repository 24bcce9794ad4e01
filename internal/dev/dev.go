// Package dev is fogmesh's embedded demo: a control plane and four node
// agents in one process, each agent with its own ports and its own loopback
// range for virtual IPs, as separate machines would have, plus a demo
// service `hello` (namespace demo) with an instance on every node.
package dev

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/fogmesh/fogmesh/internal/agent"
	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/control"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/netseam"
	"github.com/fogmesh/fogmesh/internal/relay"
	"github.com/fogmesh/fogmesh/internal/tracing"
)

// Options configure the demo. The zero value works.
type Options struct {
	// StateDir holds the control plane store and each agent's cache
	// (default $TMPDIR/fogmesh-dev).
	StateDir string
	// BasePort is the first of the demo's own ports. 0 (default) uses the
	// standard ports where the CLI looks without flags (control plane
	// 7070/7071, this machine's agent API 7073) and 15300 onwards for the
	// rest; > 0 puts every port from BasePort; -1 picks free ports (tests).
	BasePort int
	// VIPOctet is the second octet of the first agent's VIP range
	// 127.<VIPOctet>.0.0/16; agent i uses VIPOctet+i (default 101).
	VIPOctet int
	// VIPRange, when set (an IPv4 prefix of at most /30), is split in four:
	// node i gets the i-th quarter (127.28.0.0/16: 127.28.0.0/18,
	// 127.28.64.0/18, ...) instead of 127.<VIPOctet+i>.0.0/16.
	VIPRange string
	// HelloPort is the hello service's port on its VIP (default 8080: ports
	// below 1024 need root).
	HelloPort int
	// Fresh empties the state directory first, once its lock is held (a
	// running demo's directory is never emptied under it).
	Fresh bool
	// TraceEndpoint, when set, is the OTLP/HTTP collector every demo agent
	// exports its spans to (agent.TracingConfig.Endpoint); empty: no traces.
	TraceEndpoint string
	// TraceSampleRatio is the share of new traces recorded when
	// TraceEndpoint is set, 0 to 1; nil: 1 (a demo traces every request).
	TraceSampleRatio *float64
	Logger           *slog.Logger // nil = discard
}

// checkTracing rejects a trace endpoint or ratio the agents would refuse,
// naming the flag.
func (o *Options) checkTracing() error {
	if r := o.TraceSampleRatio; r != nil && (*r < 0 || *r > 1) {
		return fmt.Errorf("dev: --trace-sample-ratio %v: want 0 to 1", *r)
	}
	if o.TraceEndpoint == "" {
		return nil
	}
	if err := tracing.CheckEndpoint(o.TraceEndpoint, ""); err != nil {
		return fmt.Errorf("dev: --trace-endpoint: %w (an OTLP/HTTP collector, e.g. http://127.0.0.1:4318)", err)
	}
	return nil
}

// tracing is the agents' tracing configuration.
func (o *Options) tracing() agent.TracingConfig {
	if o.TraceEndpoint == "" {
		return agent.TracingConfig{}
	}
	ratio := 1.0
	if o.TraceSampleRatio != nil {
		ratio = *o.TraceSampleRatio
	}
	return agent.TracingConfig{Endpoint: o.TraceEndpoint, SampleRatio: &ratio}
}

// DefaultStateDir is where the demo keeps its state unless told otherwise.
func DefaultStateDir() string { return filepath.Join(os.TempDir(), "fogmesh-dev") }

// NodeSpec is one demo node.
type NodeSpec struct{ Name, Site, Region string }

// BehindNAT is the demo node that plays a node behind a NAT: it
// advertises no reachable mesh address, so its peers reach it through the
// demo's relay, then over a UDP path punched to it.
const BehindNAT = "shop-2-a"

// unreachableMesh is what BehindNAT advertises: a loopback port nothing
// listens on (binding it needs root), so a direct attempt is refused.
const unreachableMesh = "127.0.0.1:1"

// Nodes are the demo's nodes; the first is "this machine".
var Nodes = []NodeSpec{
	{"shop-1-a", "shop-1", "east"},
	{"shop-1-b", "shop-1", "east"},
	{"shop-2-a", "shop-2", "east"},
	{"cloud-a", "cloud-1", "cloud"},
}

// Demo is a running demo.
type Demo struct {
	opts    Options
	Control *control.Server
	// AdminToken authenticates the demo's own admin calls and the CLI's
	// (printed as FOGMESH_TOKEN); the control plane's CA bundle is at
	// Control.BundlePath().
	AdminToken string
	admin      *http.Client
	Agents     []*agent.Agent
	// RelayAddr is the demo relay's address (TCP, and UDP for reflexive
	// answers on the same port).
	RelayAddr string
	relay     *relay.Server
	relayWG   sync.WaitGroup
	demoLn    net.Listener
	demoSrv   *http.Server

	mu    sync.Mutex // guards hello
	hello map[string]*Hello
	lock  *stateLock // the state directory's, held until Close
}

// Hello is one instance of the demo service.
type Hello struct {
	Node NodeSpec
	Addr string // host:port it listens on when running
	srv  *http.Server
}

// Demo port numbers, as offsets from BasePort: control admin 0, control
// sync 1, demo API 2, relay 3; node i: DNS 10+10i, mesh 11+10i, agent API 12+10i,
// hello instance 13+10i, gossip 14+10i.
func (o *Options) port(i int) string {
	switch {
	case o.BasePort < 0:
		return "127.0.0.1:0"
	case o.BasePort == 0:
		if std, ok := map[int]int{0: 7070, 1: 7071, 12: 7073}[i]; ok {
			return "127.0.0.1:" + strconv.Itoa(std)
		}
		return "127.0.0.1:" + strconv.Itoa(15300+i)
	}
	return "127.0.0.1:" + strconv.Itoa(o.BasePort+i)
}

// vipRange is node i's virtual IP range.
func (o *Options) vipRange(i int) (string, error) {
	if o.VIPRange == "" {
		return fmt.Sprintf("127.%d.0.0/16", o.VIPOctet+i), nil
	}
	p, err := netip.ParsePrefix(o.VIPRange)
	if err != nil || !p.Addr().Is4() || p.Bits() > 30 {
		return "", fmt.Errorf("dev: vip range %q is not an IPv4 prefix of at most /30", o.VIPRange)
	}
	p = p.Masked()
	a := p.Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v += uint32(i) << (32 - p.Bits() - 2)
	q := netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), p.Bits()+2)
	return q.String(), nil
}

// Start starts everything; Run waits for ctx and stops.
func Start(ctx context.Context, opts Options) (*Demo, error) {
	if opts.StateDir == "" {
		opts.StateDir = DefaultStateDir()
	}
	if opts.VIPOctet == 0 {
		opts.VIPOctet = 101
	}
	if opts.VIPOctet < 1 || opts.VIPOctet+len(Nodes) > 255 {
		return nil, fmt.Errorf("dev: vip octet %d out of range", opts.VIPOctet)
	}
	if opts.HelloPort == 0 {
		opts.HelloPort = 8080
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if err := opts.checkTracing(); err != nil {
		return nil, err // before anything binds
	}
	var ranges []string
	for i := range Nodes {
		r, err := opts.vipRange(i)
		if err != nil {
			return nil, err
		}
		ranges = append(ranges, r)
	}
	d := &Demo{opts: opts, hello: map[string]*Hello{}}
	ok := false
	defer func() {
		if !ok {
			d.Close()
		}
	}()
	var err error
	if d.lock, err = lockState(opts.StateDir); err != nil {
		return nil, err // before the store, whose open would only time out
	}
	if opts.Fresh {
		ents, _ := os.ReadDir(opts.StateDir)
		for _, e := range ents {
			if e.Name() != lockFile {
				os.RemoveAll(filepath.Join(opts.StateDir, e.Name()))
			}
		}
	}
	d.Control, err = control.New(control.Config{
		StateDir: filepath.Join(opts.StateDir, "control"), AdminAddr: opts.port(0), SyncAddr: opts.port(1),
		HeartbeatInterval: time.Second, NodeTimeout: 3 * time.Second,
		VIPRange: ranges[0], Logger: opts.Logger.With("node", "control"),
	})
	if err != nil {
		return nil, portClash(err)
	}
	go d.Control.Serve(ctx)
	// The demo runs secure, like a real deployment: the agents join with
	// tokens and talk mutual TLS; the admin API needs a token.
	if d.AdminToken, err = d.Control.CreateToken(identity.TokenAdmin, "", control.RoleAdmin, 24*time.Hour); err != nil {
		return nil, err
	}
	pemRoots, err := os.ReadFile(d.Control.BundlePath())
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pemRoots)
	d.admin = &http.Client{Timeout: 10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}}}
	svc := &api.Service{Meta: api.Meta{Name: "hello", Namespace: "demo"},
		Spec: api.ServiceSpec{Ports: []api.ServicePort{{Name: "http", Port: opts.HelloPort, Protocol: "http"}}}}
	if err := svc.Validate(); err != nil {
		return nil, err
	}
	if err := d.apply(svc); err != nil {
		return nil, err
	}
	if err := d.startRelay(); err != nil {
		return nil, fmt.Errorf("dev: relay: %w", err)
	}
	for i, n := range Nodes {
		h := &Hello{Node: n}
		if err := h.start(opts.port(10 + 10*i + 3)); err != nil {
			return nil, fmt.Errorf("dev: hello on %s: %w", n.Name, err)
		}
		d.hello[n.Name] = h
		ap := netip.MustParseAddrPort(h.Addr)
		tok, err := d.Control.CreateJoinToken(n.Site, n.Region, time.Hour)
		if err != nil {
			return nil, err
		}
		advertise := "" // the mesh address
		if n.Name == BehindNAT {
			advertise = unreachableMesh
		}
		a, err := agent.New(agent.Config{
			JoinToken:  tok, // used only if the state dir holds no certificate yet
			Node:       agent.NodeConfig{Name: n.Name, Site: n.Site, Region: n.Region},
			Control:    []string{d.Control.SyncAddr()},
			DNSAddr:    opts.port(10 + 10*i),
			MeshAddr:   opts.port(10 + 10*i + 1),
			AdminAddr:  opts.port(10 + 10*i + 2),
			GossipAddr: opts.port(10 + 10*i + 4),
			VIPRange:   ranges[i],
			StateDir:   filepath.Join(opts.StateDir, n.Name),
			Workloads: []agent.Workload{{Name: "hello-" + n.Name, Service: "hello", Namespace: "demo",
				Address: "127.0.0.1", Ports: []api.EndpointPort{{Name: "http", Port: int(ap.Port())}},
				Check: agent.Check{Type: "http", Path: "/healthz"}}},
			HealthInterval: agent.Duration(time.Second),
			EjectFor:       agent.Duration(5 * time.Second),
			Logger:         opts.Logger.With("node", n.Name),
			Relays:         []string{d.RelayAddr},
			PunchAddr:      "127.0.0.1:0",
			MeshAdvertise:  advertise,
			Tracing:        opts.tracing(),
		})
		if err != nil {
			return nil, portClash(err)
		}
		d.Agents = append(d.Agents, a)
		go a.Run(ctx)
	}
	if d.demoLn, err = net.Listen("tcp", opts.port(2)); err != nil {
		return nil, fmt.Errorf("dev: demo API: %w", err)
	}
	d.demoSrv = &http.Server{Handler: d.handler(), ReadHeaderTimeout: 5 * time.Second}
	go d.demoSrv.Serve(d.demoLn)
	d.lock.publish(Instance{PID: os.Getpid(), StateDir: opts.StateDir, Admin: d.Control.AdminAddr(), VIPRanges: ranges, HelloPort: opts.HelloPort})
	ok = true
	return d, nil
}

// portClash explains a port another process holds: which demo, if one
// holds it, and the flag that moves this one's ports.
func portClash(err error) error {
	var op *net.OpError
	if !errors.Is(err, syscall.EADDRINUSE) || !errors.As(err, &op) || op.Addr == nil {
		return err
	}
	_, port, _ := net.SplitHostPort(op.Addr.String())
	who := holderOfPort(port)
	if who == "" {
		who = "another process (ss -ltnp 'sport = :" + port + "' names it)"
	}
	return &ClashError{fmt.Sprintf("%s is in use by %s: stop it, or give this demo other ports with --base-port N (or -1: any free ports): %v", op.Addr, who, err)}
}

func (d *Demo) apply(objs ...api.Object) error {
	body := "["
	for i, o := range objs {
		if i > 0 {
			body += ","
		}
		b, err := json.Marshal(o)
		if err != nil {
			return err
		}
		body += string(b)
	}
	body += "]"
	req, err := http.NewRequest("POST", "https://"+d.Control.AdminAddr()+"/v1/apply", strings.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+d.AdminToken)
	resp, err := d.admin.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("dev: apply: %s: %s", resp.Status, b)
	}
	return nil
}

// WaitReady waits until the first agent routes hello to all four instances
// (every node registered and synced) and every agent routes hello. It
// fails, naming the holder and the flag to use, when an agent cannot bind
// a virtual IP (another demo, or another process, holds that range):
// such a demo would print curl lines that reach the other one.
func (d *Demo) WaitReady(ctx context.Context) error {
	for {
		if d.synced() {
			return d.vipClash()
		}
		select {
		case <-ctx.Done():
			return errors.New("dev: agents did not sync in time")
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// synced reports whether the first agent routes hello to every instance
// and every other agent routes hello.
func (d *Demo) synced() bool {
	for i, a := range d.Agents {
		want := 1
		if i == 0 {
			want = len(Nodes)
		}
		ok := false
		for _, r := range a.Routes() {
			if r.Service == "demo/hello" && len(r.Endpoints) >= want {
				ok = true
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// vipClash is an error naming the virtual IPs the agents cannot bind, who
// holds them, and the flag that moves this demo's, or nil.
func (d *Demo) vipClash() error {
	var held []string
	who := ""
	for i, a := range d.Agents {
		for _, f := range a.VIPBindFailures() {
			held = append(held, fmt.Sprintf("%s (node %s)", f.Address, Nodes[i].Name))
			if ap, err := netip.ParseAddrPort(f.Address); err == nil && who == "" {
				who = holderOf(ap.Addr())
			}
		}
	}
	if len(held) == 0 {
		return nil
	}
	if who == "" {
		who = "another process"
	}
	return &ClashError{fmt.Sprintf("the virtual IPs %s are held by %s, so this demo's clients would reach it: stop it, or give this demo other addresses with --vip-octet N (its nodes use 127.N.0.0/16 to 127.N+3.0.0/16) or --vip-range CIDR, or another --hello-port",
		strings.Join(held, ", "), who)}
}

// DemoAddr is the demo API address.
func (d *Demo) DemoAddr() string { return d.demoLn.Addr().String() }

// VIP returns the hello service's address on the first agent ("this machine").
func (d *Demo) VIP() string {
	for _, r := range d.Agents[0].Routes() {
		if r.Service == "demo/hello" {
			return net.JoinHostPort(r.VIP, strconv.Itoa(d.opts.HelloPort))
		}
	}
	return ""
}

// StopHello stops the hello instance on node (its process "dies").
func (d *Demo) StopHello(node string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	h := d.hello[node]
	if h == nil {
		return fmt.Errorf("no node %q (have %v)", node, d.nodeNames())
	}
	return h.stop()
}

// StartHello starts it again on the same port.
func (d *Demo) StartHello(node string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	h := d.hello[node]
	if h == nil {
		return fmt.Errorf("no node %q (have %v)", node, d.nodeNames())
	}
	return h.start(h.Addr)
}

func (d *Demo) nodeNames() []string {
	var out []string
	for n := range d.hello {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// startRelay runs the demo's relay on loopback, TCP and UDP on one port,
// with a certificate from the demo's mesh CA.
func (d *Demo) startRelay() error {
	src, err := d.Control.CA().RelaySource("dev-relay")
	if err != nil {
		return err
	}
	srv, err := relay.New(relay.Config{Source: src, Logger: d.opts.Logger.With("node", "relay")})
	if err != nil {
		return err
	}
	pc, ln, err := netseam.ListenTwin(d.opts.port(3))
	if err != nil {
		srv.Close()
		return err
	}
	d.relay, d.RelayAddr = srv, ln.Addr().String()
	d.relayWG.Add(2)
	go func() { defer d.relayWG.Done(); srv.Serve(ln) }()
	go func() { defer d.relayWG.Done(); srv.ServeUDP(pc) }()
	return nil
}

// Close stops everything and waits.
func (d *Demo) Close() {
	if d.demoSrv != nil {
		d.demoSrv.Close()
	}
	for _, a := range d.Agents {
		a.Close()
	}
	if d.relay != nil {
		d.relay.Close()
		d.relayWG.Wait()
	}
	if d.Control != nil {
		d.Control.Close()
	}
	d.mu.Lock()
	for _, h := range d.hello {
		h.stop()
	}
	d.mu.Unlock()
	d.lock.release() // last: the store is closed
	d.lock = nil
}

func (h *Hello) start(addr string) error {
	if h.srv != nil {
		return fmt.Errorf("hello on %s is already running", h.Node.Name)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	h.Addr = ln.Addr().String()
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from node=%s site=%s region=%s\n", h.Node.Name, h.Node.Site, h.Node.Region)
	})
	h.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go h.srv.Serve(ln)
	return nil
}

func (h *Hello) stop() error {
	if h.srv == nil {
		return fmt.Errorf("hello on %s is not running", h.Node.Name)
	}
	err := h.srv.Close()
	h.srv = nil
	return err
}

func (d *Demo) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /demo/{action}/{node}", func(w http.ResponseWriter, r *http.Request) {
		var err error
		switch r.PathValue("action") {
		case "stop":
			err = d.StopHello(r.PathValue("node"))
		case "start":
			err = d.StartHello(r.PathValue("node"))
		default:
			http.Error(w, `{"error":"action must be stop or start"}`, http.StatusNotFound)
			return
		}
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprintf(w, "{\"error\":%q}\n", err.Error())
			return
		}
		fmt.Fprintf(w, "{\"%s\":%q}\n", r.PathValue("action"), r.PathValue("node"))
	})
	return mux
}
