package relay

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/netlab"
)

// failoverBound is how long a DialPeer may take after the home relay
// died: the dead relay refuses at once, the next one is tried.
const failoverBound = 2 * time.Second

// mesh is a CA and relays of it serving on listeners the test chose.
type mesh struct {
	t    *testing.T
	ca   *identity.CA
	td   spiffeid.TrustDomain
	srvs map[string]*Server // by address
}

func newMesh(t *testing.T) *mesh {
	ca := newCA(t)
	return &mesh{t: t, ca: ca, td: ca.TrustDomain(), srvs: map[string]*Server{}}
}

// relayOn starts a relay serving ln and returns its address; it is
// closed when the test ends, if the test did not close it.
func (m *mesh) relayOn(ln net.Listener, name string, mod func(*Config)) string {
	m.t.Helper()
	cfg := Config{Source: source(m.t, m.ca, "relay", name)}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		m.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ln) }()
	m.t.Cleanup(func() {
		srv.Close()
		<-done
	})
	addr := ln.Addr().String()
	m.srvs[addr] = srv
	return addr
}

// relay starts a relay on loopback.
func (m *mesh) relay(name string, mod func(*Config)) string {
	m.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		m.t.Fatal(err)
	}
	return m.relayOn(ln, name, mod)
}

// pool starts a pool for a new node; it is closed when the test ends.
func (m *mesh) pool(site, name string, relays []string, mod func(*PoolConfig)) (*Pool, string) {
	m.t.Helper()
	src := source(m.t, m.ca, site, name)
	cfg := PoolConfig{Relays: relays, TLS: src.ClientConfig(AuthorizeRelay(m.td)), MinBackoff: 20 * time.Millisecond,
		MaxBackoff: 500 * time.Millisecond}
	if mod != nil {
		mod(&cfg)
	}
	p, err := NewPool(cfg)
	if err != nil {
		m.t.Fatal(err)
	}
	m.t.Cleanup(func() { p.Close() })
	return p, src.SVID().ID.String()
}

// echo accepts p's incoming sessions and echoes their bytes until the
// test ends; it records the relay of each session.
type echo struct {
	mu     sync.Mutex // guards the following
	relays []string
}

func serveEcho(t *testing.T, p *Pool) *echo {
	e := &echo{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var cmu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case in := <-p.Incoming():
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				conn, err := in.Accept(ctx)
				cancel()
				if err != nil {
					continue // the dialer sees accept_timeout
				}
				e.mu.Lock()
				e.relays = append(e.relays, in.Relay)
				e.mu.Unlock()
				cmu.Lock()
				conns = append(conns, conn)
				cmu.Unlock()
				wg.Add(1)
				go func() { defer wg.Done(); io.Copy(conn, conn); conn.Close() }()
			}
		}
	}()
	t.Cleanup(func() {
		close(stop)
		cmu.Lock()
		for _, c := range conns {
			c.Close()
		}
		cmu.Unlock()
		wg.Wait()
	})
	return e
}

func (e *echo) last() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.relays) == 0 {
		return ""
	}
	return e.relays[len(e.relays)-1]
}

// roundTrip writes msg on conn and reads it back within 20 s.
func roundTrip(conn net.Conn, msg string) error {
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	defer conn.SetDeadline(time.Time{})
	if _, err := io.WriteString(conn, msg); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(conn, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return errors.New("echoed " + string(buf) + ", want " + msg)
	}
	return nil
}

// sessionEnds checks that conn's session was closed (not merely idle).
func sessionEnds(t *testing.T, conn net.Conn) {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	_, err := conn.Read(make([]byte, 1))
	if err == nil {
		t.Fatal("the session through the closed relay still delivered a byte")
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("the session through the closed relay did not end")
	}
}

func status(p *Pool, addr string) RelayStatus {
	for _, s := range p.Status() {
		if s.Addr == addr {
			return s
		}
	}
	return RelayStatus{}
}

func homeOf(p *Pool) string {
	_, a := p.Home()
	return a
}

func other(addrs []string, a string) string {
	if addrs[0] == a {
		return addrs[1]
	}
	return addrs[0]
}

// poolMetric reads one series of a metrics set.
func poolMetric(t *testing.T, set *metrics.Set, series string) float64 {
	t.Helper()
	f := &fixture{t: t, set: set}
	return f.metric(series)
}

// TestPoolFailsOverToTheOtherRelay: two agents connected to two relays
// talk through the home relay; the home relay dies: the open session
// ends, the next DialPeer goes through the other relay within
// failoverBound, and the pool calls it home.
func TestPoolFailsOverToTheOtherRelay(t *testing.T) {
	m := newMesh(t)
	addrs := []string{m.relay("r1", nil), m.relay("r2", nil)}
	set := metrics.NewSet()
	x, _ := m.pool("site-a", "x", addrs, func(c *PoolConfig) { c.Metrics = set })
	y, yid := m.pool("site-b", "y", addrs, nil)
	e := serveEcho(t, y)
	ctx := ctx20(t)
	for _, p := range []*Pool{x, y} {
		if err := p.WaitConnected(ctx, 2); err != nil {
			t.Fatal(err)
		}
	}
	home := homeOf(x)
	if home == "" {
		t.Fatal("no home relay with both relays connected")
	}
	conn, via, err := x.DialPeer(ctx, yid)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := roundTrip(conn, marker); err != nil { // the echo runs: it recorded the relay
		t.Fatal(err)
	}
	if via != home || e.last() != home {
		t.Fatalf("dialed through %s, accepted through %s; want the home relay %s", via, e.last(), home)
	}

	m.srvs[home].Close()
	sessionEnds(t, conn)
	start := time.Now()
	conn2, via2, err := x.DialPeer(ctx, yid)
	took := time.Since(start)
	if err != nil {
		t.Fatalf("DialPeer after the home relay died: %v", err)
	}
	defer conn2.Close()
	if took > failoverBound {
		t.Errorf("DialPeer after the home relay died took %v; want at most %v", took, failoverBound)
	}
	if want := other(addrs, home); via2 != want {
		t.Fatalf("dialed through %s after %s died; want %s", via2, home, want)
	}
	if err := roundTrip(conn2, marker+"-2"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the other relay to become home", func() bool { return homeOf(x) == other(addrs, home) })
	if st := status(x, home); st.Connected || st.Failures == 0 || st.LastError == "" {
		t.Errorf("status of the dead relay: %+v", st)
	}
	if st := status(x, via2); !st.Connected || !st.Home || st.Sessions != 1 || st.SmoothedRTT <= 0 {
		t.Errorf("status of the new home relay: %+v", st)
	}
	if v := poolMetric(t, set, `fogmesh_relay_pool_failovers_total`); v != 1 {
		t.Errorf("failovers_total = %v, want 1", v)
	}
	if v := poolMetric(t, set, `fogmesh_relay_pool_home{relay="`+via2+`"}`); v != 1 {
		t.Errorf("home gauge of %s = %v, want 1", via2, v)
	}
}

// TestPoolPicksTheNearestRelay: relay 1 is reached through an impairment
// relay adding 100 ms each way; relay 2's path is broken at first, so
// relay 1 becomes home. Once relay 2 is reachable the pool measures it
// nearer and makes it home, and DialPeer uses it.
func TestPoolPicksTheNearestRelay(t *testing.T) {
	m := newMesh(t)
	r1 := m.relay("r1", nil)
	r2 := m.relay("r2", nil)
	imp, err := netlab.ImpairTCP(netlab.HostNetwork, "127.0.0.1:0", r1, netlab.Impairment{Delay: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { imp.Close() })
	far := imp.Addr().String()
	cut := newCutter(t, r2)
	cut.setCut(true)
	near := cut.ln.Addr().String()
	x, _ := m.pool("site-a", "x", []string{far, near}, func(c *PoolConfig) { c.KeepAlive = 50 * time.Millisecond })
	y, yid := m.pool("site-b", "y", []string{r1, r2}, nil)
	serveEcho(t, y)
	ctx := ctx20(t)
	if err := y.WaitConnected(ctx, 2); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the far relay to become home while the near one is unreachable", func() bool { return homeOf(x) == far })
	cut.setCut(false)
	waitFor(t, "the near relay to become home", func() bool { return homeOf(x) == near })
	if st := status(x, far); st.RTT < 200*time.Millisecond || st.SmoothedRTT < 200*time.Millisecond {
		t.Errorf("RTT through 2×100 ms of delay measured as %v (smoothed %v)", st.RTT, st.SmoothedRTT)
	}
	if st := status(x, near); !st.Connected || st.SmoothedRTT >= status(x, far).SmoothedRTT {
		t.Errorf("near relay: %+v", st)
	}
	conn, via, err := x.DialPeer(ctx, yid)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if via != near {
		t.Errorf("dialed through %s, want the near relay %s", via, near)
	}
	if err := roundTrip(conn, marker); err != nil {
		t.Fatal(err)
	}
}

// TestPoolReachesAPeerOnAnotherRelay: the peer is connected only to the
// pool's second relay. DialPeer is refused by the home relay
// (peer_not_connected) and goes through the other; a session the peer
// opens through that relay arrives on the pool's Incoming.
func TestPoolReachesAPeerOnAnotherRelay(t *testing.T) {
	m := newMesh(t)
	addrs := []string{m.relay("r1", nil), m.relay("r2", nil)}
	x, xid := m.pool("site-a", "x", addrs, nil)
	e := serveEcho(t, x)
	ctx := ctx20(t)
	if err := x.WaitConnected(ctx, 2); err != nil {
		t.Fatal(err)
	}
	home := homeOf(x)
	otherAddr := other(addrs, home)
	// y: one plain client on the relay that is not x's home.
	ysrc := source(t, m.ca, "site-b", "y")
	yc, err := DialClient(ctx, otherAddr, ysrc.ClientConfig(AuthorizeRelay(m.td)))
	if err != nil {
		t.Fatal(err)
	}
	defer yc.Close()
	yid := ysrc.SVID().ID.String()
	var ywg sync.WaitGroup
	defer ywg.Wait()
	ywg.Add(1)
	go func() {
		defer ywg.Done()
		select {
		case in := <-yc.Incoming():
			conn, err := yc.AcceptSession(ctx, in.Session)
			if err == nil {
				io.Copy(conn, conn)
				conn.Close()
			}
		case <-ctx.Done():
		case <-yc.Done():
		}
	}()

	conn, via, err := x.DialPeer(ctx, yid)
	if err != nil {
		t.Fatal(err)
	}
	if via != otherAddr {
		t.Errorf("dialed through %s, want %s (the only relay the peer is on)", via, otherAddr)
	}
	if err := roundTrip(conn, marker); err != nil {
		t.Fatal(err)
	}
	conn.Close()

	in, err := yc.DialPeer(ctx, xid)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if err := roundTrip(in, marker+"-in"); err != nil {
		t.Fatal(err)
	}
	if e.last() != otherAddr {
		t.Errorf("incoming session surfaced from %q, want %s", e.last(), otherAddr)
	}

	if _, err := yc.Introduce(ctx, xid, []string{"192.0.2.1:4000"}); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-x.Introductions():
		if m.Relay != otherAddr || m.Peer != yid || len(m.Candidates) == 0 || m.Candidates[0] != "192.0.2.1:4000" {
			t.Errorf("introduction %+v; want y's candidates through %s", m, otherAddr)
		}
	case <-ctx.Done():
		t.Fatal("no introduction surfaced from the pool")
	}
}

// TestPoolDialsWithItsDialer: every connection to the relay, control and
// data, is opened by PoolConfig.Dial (how agents in a namespace or behind
// a proxy connect).
func TestPoolDialsWithItsDialer(t *testing.T) {
	m := newMesh(t)
	addrs := []string{m.relay("r1", nil)}
	var dials atomic.Int64
	x, _ := m.pool("site-a", "x", addrs, func(c *PoolConfig) {
		c.Dial = func(ctx context.Context, network, address string) (net.Conn, error) {
			dials.Add(1)
			var d net.Dialer
			return d.DialContext(ctx, network, address)
		}
	})
	y, yid := m.pool("site-b", "y", addrs, nil)
	serveEcho(t, y)
	ctx := ctx20(t)
	for _, p := range []*Pool{x, y} {
		if err := p.WaitConnected(ctx, 1); err != nil {
			t.Fatal(err)
		}
	}
	if n := dials.Load(); n != 1 {
		t.Fatalf("%d dials for the control connection, want 1", n)
	}
	conn, _, err := x.DialPeer(ctx, yid)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := roundTrip(conn, marker); err != nil {
		t.Fatal(err)
	}
	if n := dials.Load(); n != 2 {
		t.Errorf("%d dials after one session, want 2 (control and data)", n)
	}
}

// TestPoolRefusalIsFinal: a policy refusal would be the same at every
// relay, so DialPeer returns it at once instead of trying the others.
func TestPoolRefusalIsFinal(t *testing.T) {
	m := newMesh(t)
	deny := func(c *Config) { c.Policy = func(from, to spiffeid.ID) error { return errors.New("no") } }
	addrs := []string{m.relay("r1", deny), m.relay("r2", deny)}
	x, _ := m.pool("site-a", "x", addrs, nil)
	y, yid := m.pool("site-b", "y", addrs, nil)
	ctx := ctx20(t)
	for _, p := range []*Pool{x, y} {
		if err := p.WaitConnected(ctx, 2); err != nil {
			t.Fatal(err)
		}
	}
	_, via, err := x.DialPeer(ctx, yid)
	var re *Error
	if !errors.As(err, &re) || re.Reason != ReasonDenied {
		t.Fatalf("DialPeer to a denied peer: %v, want reason %s", err, ReasonDenied)
	}
	if via != homeOf(x) {
		t.Errorf("refusal from %s, want the home relay %s", via, homeOf(x))
	}
	if st := status(x, other(addrs, via)); st.Sessions != 0 {
		t.Errorf("a session through the other relay: %+v", st)
	}
}

// cutter forwards TCP connections to a target until cut: then it closes
// them and refuses new ones until healed, like a path that broke.
type cutter struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu    sync.Mutex // guards the following
	cut   bool
	conns map[net.Conn]struct{}
}

func newCutter(t *testing.T, target string) *cutter {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &cutter{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	c.wg.Add(1)
	go c.acceptLoop()
	t.Cleanup(func() {
		ln.Close()
		c.setCut(true)
		c.wg.Wait()
	})
	return c
}

func (c *cutter) acceptLoop() {
	defer c.wg.Done()
	for {
		a, err := c.ln.Accept()
		if err != nil {
			return
		}
		c.mu.Lock()
		if c.cut {
			c.mu.Unlock()
			a.Close()
			continue
		}
		b, err := net.Dial("tcp", c.target)
		if err != nil {
			c.mu.Unlock()
			a.Close()
			continue
		}
		c.conns[a], c.conns[b] = struct{}{}, struct{}{}
		c.mu.Unlock()
		c.wg.Add(2)
		go func() { defer c.wg.Done(); io.Copy(a, b); a.Close() }()
		go func() { defer c.wg.Done(); io.Copy(b, a); b.Close() }()
	}
}

func (c *cutter) setCut(cut bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cut = cut
	if cut {
		for conn := range c.conns {
			conn.Close()
		}
		clear(c.conns)
	}
}

// TestPoolReconnectsALostRelay: the only relay's path breaks and stays
// broken for a while: the pool reports it lost, DialPeer waits and then
// fails with ErrNoRelay, reconnection attempts fail; once the path heals,
// the pool reconnects by itself and DialPeer works again.
func TestPoolReconnectsALostRelay(t *testing.T) {
	m := newMesh(t)
	r1 := m.relay("r1", nil)
	cut := newCutter(t, r1)
	via := cut.ln.Addr().String()
	x, _ := m.pool("site-a", "x", []string{via}, nil)
	y, yid := m.pool("site-b", "y", []string{r1}, nil)
	serveEcho(t, y)
	ctx := ctx20(t)
	for _, p := range []*Pool{x, y} {
		if err := p.WaitConnected(ctx, 1); err != nil {
			t.Fatal(err)
		}
	}
	cut.setCut(true)
	waitFor(t, "the pool to see the relay lost", func() bool { return !status(x, via).Connected })
	waitFor(t, "reconnection attempts to fail", func() bool { return status(x, via).Failures >= 3 })
	if c, a := x.Home(); c != nil || a != "" {
		t.Errorf("home relay %s while none is connected", a)
	}
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	_, _, err := x.DialPeer(short, yid)
	cancel()
	if !errors.Is(err, ErrNoRelay) {
		t.Errorf("DialPeer with no relay: %v, want ErrNoRelay", err)
	}

	cut.setCut(false)
	if err := x.WaitConnected(ctx, 1); err != nil {
		t.Fatal(err)
	}
	conn, _, err := x.DialPeer(ctx, yid)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := roundTrip(conn, marker); err != nil {
		t.Fatal(err)
	}
	if st := status(x, via); st.Connects != 2 {
		t.Errorf("connects = %d, want 2 (first and reconnection)", st.Connects)
	}
}

func TestPoolConfigErrors(t *testing.T) {
	src := source(t, newCA(t), "s", "n")
	tlsConf := src.ClientConfig(AuthorizeRelay(src.SVID().ID.TrustDomain()))
	for name, tc := range map[string]struct {
		cfg  PoolConfig
		want string
	}{
		"no relays":     {PoolConfig{TLS: tlsConf}, "no relay"},
		"bad address":   {PoolConfig{Relays: []string{"relay-without-port"}, TLS: tlsConf}, "relay-without-port"},
		"duplicate":     {PoolConfig{Relays: []string{"127.0.0.1:1", "127.0.0.1:1"}, TLS: tlsConf}, "twice"},
		"no TLS":        {PoolConfig{Relays: []string{"127.0.0.1:1"}}, "TLS"},
		"negative":      {PoolConfig{Relays: []string{"127.0.0.1:1"}, TLS: tlsConf, KeepAlive: -1}, "negative"},
		"hysteresis":    {PoolConfig{Relays: []string{"127.0.0.1:1"}, TLS: tlsConf, Hysteresis: 2}, "hysteresis"},
		"backoff order": {PoolConfig{Relays: []string{"127.0.0.1:1"}, TLS: tlsConf, MinBackoff: time.Second, MaxBackoff: time.Millisecond}, "backoff"},
	} {
		p, err := NewPool(tc.cfg)
		if err == nil {
			p.Close()
			t.Errorf("%s: no error", name)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %q does not mention %q", name, err, tc.want)
		}
	}
}

// TestPoolHomeHysteresis: a connected home gives way only to a relay
// below Hysteresis times its RTT; a lost home goes to the nearest
// measured relay at once, and an unmeasured relay is never home.
func TestPoolHomeHysteresis(t *testing.T) {
	p := &Pool{cfg: PoolConfig{Hysteresis: 0.8}, mFail: metrics.NewSet().NewCounter("f")}
	a := &poolRelay{addr: "a", client: &Client{}, srtt: 10 * time.Millisecond}
	b := &poolRelay{addr: "b", client: &Client{}, srtt: 12 * time.Millisecond}
	c := &poolRelay{addr: "c", client: &Client{}} // connected, not measured
	p.relays = []*poolRelay{c, b, a}
	step := func(what string, want *poolRelay) {
		t.Helper()
		p.pickHomeLocked()
		if p.home != want {
			got := "none"
			if p.home != nil {
				got = p.home.addr
			}
			t.Fatalf("%s: home %s, want %s", what, got, want.addr)
		}
	}
	step("first choice", a)
	b.srtt = 9 * time.Millisecond
	step("b a little nearer", a)
	b.srtt = 7 * time.Millisecond
	step("b below 0.8 of a", b)
	a.srtt = 6 * time.Millisecond
	step("a a little nearer again", b)
	b.client = nil
	step("home lost", a)
	if p.mFail.Get() != 1 {
		t.Errorf("failovers = %d, want 1", p.mFail.Get())
	}
	a.client = nil
	p.pickHomeLocked()
	if p.home != nil {
		t.Errorf("home %s with no measured relay connected", p.home.addr)
	}
}
