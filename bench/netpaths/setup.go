package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/netlab"
	"github.com/fogmesh/fogmesh/internal/punch"
	"github.com/fogmesh/fogmesh/internal/relay"
	"github.com/fogmesh/fogmesh/internal/transport"
)

// path opens mesh streams to the serving node's workloads ("echo",
// "sink") over one carrier.
type path struct {
	name string
	desc string
	dial func(ctx context.Context, service string) (net.Conn, error)
}

// bench is everything set up once: the lab's relay process, the nodes and
// the three paths. close undoes it (the lab itself is closed by run).
type bench struct {
	lab        *netlab.Lab
	relayCmd   *exec.Cmd
	relayPID   int
	relayLog   string
	relayAddr  string
	adminAddr  string
	paths      []*path
	punchInfo  string
	c1, a1hold *node
	holdLimit  int

	mu      sync.Mutex
	closers []func()
	// holdIn receives c1's side of the sessions the hold node dials.
	holdIn chan net.Conn
}

func (b *bench) onClose(f func()) {
	b.mu.Lock()
	b.closers = append(b.closers, f)
	b.mu.Unlock()
}

// close runs the closers last first, then stops the relay process.
func (b *bench) close() {
	b.mu.Lock()
	cs := b.closers
	b.closers = nil
	b.mu.Unlock()
	for i := len(cs) - 1; i >= 0; i-- {
		cs[i]()
	}
}

// node is one mesh node of the lab: an identity issued by the bench's CA
// and, when it uses the relay, its control connection.
type node struct {
	host *netlab.Host
	name string
	src  *identity.Source
	id   spiffeid.ID
	rc   *relay.Client
}

func newNode(ca *identity.CA, h *netlab.Host, site, name string) (*node, error) {
	key, err := identity.NewKey()
	if err != nil {
		return nil, err
	}
	der, err := identity.NewCSR(key)
	if err != nil {
		return nil, err
	}
	csr, err := identity.ParseCSR(der)
	if err != nil {
		return nil, err
	}
	certs, err := ca.SignNodeCSR(csr, site, name)
	if err != nil {
		return nil, err
	}
	svid, err := identity.NewSVID(certs, key)
	if err != nil {
		return nil, err
	}
	src := identity.NewSource()
	src.SetSVID(svid)
	src.SetBundles(ca.Bundle())
	return &node{host: h, name: name, src: src, id: svid.ID}, nil
}

// nsNetwork is netseam.Network inside a namespace (the mesh client's
// TCP dials).
type nsNetwork struct{ h *netlab.Host }

func (n nsNetwork) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	return n.h.DialContext(ctx, network, addr)
}

func (n nsNetwork) Listen(ctx context.Context, network, addr string) (net.Listener, error) {
	return n.h.Listen(network, addr)
}

// relayNetwork is netseam.Network whose Dial opens a relayed session to
// peer: the mesh client's TLS+yamux runs end to end inside it.
type relayNetwork struct {
	rc   *relay.Client
	peer spiffeid.ID
}

func (n relayNetwork) Dial(ctx context.Context, _, _ string) (net.Conn, error) {
	return n.rc.DialPeer(ctx, n.peer.String())
}

func (n relayNetwork) Listen(context.Context, string, string) (net.Listener, error) {
	return nil, errors.New("relayed network: no listening")
}

// chanListener hands the mesh server the relayed sessions its node
// accepted.
type chanListener struct {
	c    chan net.Conn
	done chan struct{}
	once sync.Once
}

func newChanListener() *chanListener {
	return &chanListener{c: make(chan net.Conn, 16), done: make(chan struct{})}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.c:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error { l.once.Do(func() { close(l.done) }); return nil }
func (l *chanListener) Addr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4zero}
}

// workloads are an echo server and a sink (reads to EOF, answers the byte
// count as 8 bytes) on 127.0.0.1 inside a serving node's namespace; they
// are the mesh server's Dialer.
type workloads struct {
	h          *netlab.Host
	echo, sink string
}

func startWorkloads(b *bench, h *netlab.Host) (*workloads, error) {
	w := &workloads{h: h}
	for _, svc := range []struct {
		addr  *string
		serve func(net.Conn)
	}{{&w.echo, serveEcho}, {&w.sink, serveSink}} {
		ln, err := h.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		b.onClose(func() { ln.Close() })
		*svc.addr = ln.Addr().String()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go svc.serve(c)
			}
		}()
	}
	return w, nil
}

func serveEcho(c net.Conn) {
	defer c.Close()
	io.Copy(c, c)
}

func serveSink(c net.Conn) {
	defer c.Close()
	n, _ := io.Copy(io.Discard, c)
	var out [8]byte
	for i := range out {
		out[i] = byte(n >> (56 - 8*i))
	}
	c.Write(out[:])
}

func (w *workloads) DialLocal(ctx context.Context, h transport.Header) (net.Conn, error) {
	switch h.Service {
	case "echo":
		return w.h.DialContext(ctx, "tcp", w.echo)
	case "sink":
		return w.h.DialContext(ctx, "tcp", w.sink)
	}
	return nil, fmt.Errorf("%w: %s", transport.ErrUnknownDestination, h)
}

func header(service string) transport.Header {
	return transport.Header{Namespace: "bench", Service: service, Endpoint: "e1", Port: "tcp"}
}

// setup starts the relay process and the three paths.
func setup(ctx context.Context, lab *netlab.Lab, bin, tmp string) (*bench, error) {
	b := &bench{lab: lab, holdIn: make(chan net.Conn, 64)}
	ca, err := identity.OpenCA(identity.CAConfig{Dir: filepath.Join(tmp, "ca")})
	if err != nil {
		return b, fmt.Errorf("CA: %w", err)
	}
	if err := b.startRelay(ctx, ca, bin, tmp); err != nil {
		return b, err
	}
	mk := func(h *netlab.Host, site, name string) *node {
		if err != nil {
			return nil
		}
		var n *node
		n, err = newNode(ca, h, site, name)
		return n
	}
	l1 := mk(lab.LAN.Nodes[0], "lan", "l1")
	l2 := mk(lab.LAN.Nodes[1], "lan", "l2")
	a1 := mk(lab.A.Nodes[0], "a", "a1")
	c1 := mk(lab.C.Nodes[0], "c", "c1")
	a1hold := mk(lab.A.Nodes[0], "a", "a1-hold")
	if err != nil {
		return b, fmt.Errorf("identities: %w", err)
	}
	b.c1, b.a1hold = c1, a1hold
	for _, n := range []*node{l1, a1, c1, a1hold} {
		if err := b.connectRelay(ctx, ca, n); err != nil {
			return b, err
		}
	}
	if err := b.direct(ctx, l1, l2); err != nil {
		return b, fmt.Errorf("direct path: %w", err)
	}
	if err := b.punched(ctx, l1, a1); err != nil {
		return b, fmt.Errorf("punched path: %w", err)
	}
	if err := b.relayed(ctx, a1, c1); err != nil {
		return b, fmt.Errorf("relayed path: %w", err)
	}
	return b, nil
}

// startRelay runs `fogmesh relay` inside relay 1's namespace and waits for
// its address file.
func (b *bench) startRelay(ctx context.Context, ca *identity.CA, bin, tmp string) error {
	r, err := newNode(ca, b.lab.Relay1, "relay", "r1")
	if err != nil {
		return err
	}
	keyPEM, err := identity.EncodeKeyPEM(r.src.SVID().PrivateKey)
	if err != nil {
		return err
	}
	files := map[string][]byte{
		"cert.pem":   identity.EncodeCertificatesPEM(r.src.SVID().Certificates...),
		"key.pem":    keyPEM,
		"bundle.pem": identity.EncodeCertificatesPEM(ca.Roots()...),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(tmp, name), data, 0o600); err != nil {
			return err
		}
	}
	addrFile := filepath.Join(tmp, "relay-addrs.json")
	b.relayLog = filepath.Join(tmp, "relay.log")
	logf, err := os.Create(b.relayLog)
	if err != nil {
		return err
	}
	b.holdLimit = 10_000
	cmd := b.lab.Relay1.Command(ctx, bin, "relay",
		"-addr", b.lab.Relay1.Addr.String()+":0", "-admin-addr", "127.0.0.1:0", "-addr-file", addrFile,
		"-cert", filepath.Join(tmp, "cert.pem"), "-key", filepath.Join(tmp, "key.pem"),
		"-bundle", filepath.Join(tmp, "bundle.pem"),
		"-bytes-per-second", "-1", "-max-sessions-per-node", strconv.Itoa(b.holdLimit),
		"-idle-timeout", "30m", "-log-level", "warn")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("relay process: %w", err)
	}
	b.relayCmd, b.relayPID = cmd, cmd.Process.Pid
	exited := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(exited) }()
	b.onClose(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		raw, err := os.ReadFile(addrFile)
		if err == nil {
			var addrs map[string]string
			if json.Unmarshal(raw, &addrs) == nil && addrs["relay"] != "" {
				b.relayAddr, b.adminAddr = addrs["relay"], addrs["admin"]
				return nil
			}
		}
		select {
		case <-exited:
			out, _ := os.ReadFile(b.relayLog)
			return fmt.Errorf("relay process exited: %s", out)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return errors.New("relay process wrote no address file in 20s")
		}
	}
}

// connectRelay opens n's control connection to the relay from n's
// namespace and keeps it alive.
func (b *bench) connectRelay(ctx context.Context, ca *identity.CA, n *node) error {
	dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	rc, err := relay.DialClientVia(dctx, b.relayAddr, n.src.ClientConfig(relay.AuthorizeRelay(ca.TrustDomain())), n.host.DialContext)
	if err != nil {
		return fmt.Errorf("%s: relay: %w", n.name, err)
	}
	n.rc = rc
	kctx, kcancel := context.WithCancel(context.Background())
	go rc.KeepAlive(kctx, 20*time.Second)
	b.onClose(func() { kcancel(); rc.Close() })
	return nil
}

// direct: l1 → l2's mesh port on its LAN address, TLS+yamux over TCP.
func (b *bench) direct(ctx context.Context, l1, l2 *node) error {
	w, err := startWorkloads(b, l2.host)
	if err != nil {
		return err
	}
	ln, err := l2.host.Listen("tcp", l2.host.Addr.String()+":0")
	if err != nil {
		return err
	}
	srv, err := transport.NewServer(transport.ServerConfig{Listener: ln, Dialer: w,
		TLS: l2.src.ServerConfig(identity.AuthorizeNode(), identity.ALPNMesh)})
	if err != nil {
		ln.Close()
		return err
	}
	go srv.Serve(context.Background())
	b.onClose(func() { srv.Close() })
	addr := ln.Addr().String()
	cli := transport.NewClient(transport.ClientConfig{
		TLS:        l1.src.ClientConfig(identity.AuthorizeNode(), identity.ALPNMesh),
		SourceNode: l1.name, DialTimeout: 10 * time.Second, Network: nsNetwork{l1.host},
		PeerID: func(string) spiffeid.ID { return l2.id },
	})
	b.onClose(func() { cli.Close() })
	b.paths = append(b.paths, &path{name: "direct",
		desc: fmt.Sprintf("l1 %s → l2 %s, TLS+yamux over TCP on one LAN", l1.host.Addr, addr),
		dial: func(ctx context.Context, svc string) (net.Conn, error) { return cli.Dial(ctx, addr, header(svc)) }})
	return nil
}

// punchNode is a node's UDP socket with its QUIC transport and puncher.
type punchNode struct {
	*node
	pc    net.PacketConn
	tr    *quic.Transport
	p     *punch.Puncher
	cands punch.Candidates
}

func (b *bench) punchNode(ctx context.Context, n *node) (*punchNode, error) {
	pn := &punchNode{node: n}
	udp, err := net.ResolveUDPAddr("udp4", b.relayAddr) // the relay's UDP port is its TCP port
	if err != nil {
		return nil, err
	}
	gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err = n.host.Do(func() error {
		var err error
		if pn.pc, err = net.ListenPacket("udp4", "0.0.0.0:0"); err != nil {
			return err
		}
		pn.cands, err = punch.Gather(gctx, n.rc, pn.pc, udp, 0)
		return err
	})
	if pn.pc != nil {
		b.onClose(func() { pn.pc.Close() })
	}
	if err != nil {
		return nil, fmt.Errorf("%s: gather: %w", n.name, err)
	}
	pn.tr = transport.NewQUICTransport(pn.pc)
	b.onClose(func() { pn.tr.Close() })
	if pn.p, err = punch.New(punch.Config{Transport: pn.tr, Self: n.id.String()}); err != nil {
		return nil, err
	}
	b.onClose(func() { pn.p.Close() })
	return pn, nil
}

// punched: l1 and a1 are introduced by the relay and punch through both
// NATs; the node whose ID sorts first dials the other's QUIC server on the
// punched socket.
func (b *bench) punched(ctx context.Context, l1n, a1n *node) error {
	x, err := b.punchNode(ctx, l1n)
	if err != nil {
		return err
	}
	y, err := b.punchNode(ctx, a1n)
	if err != nil {
		return err
	}
	pctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	type res struct {
		pa  *punch.Path
		err error
	}
	acc := make(chan res, 1)
	go func() { pa, err := y.p.Accept(pctx, y.rc); acc <- res{pa, err} }()
	start := time.Now()
	in, err := x.rc.Introduce(pctx, y.id.String(), x.cands.Strings())
	if err != nil {
		<-acc
		return fmt.Errorf("introduce: %w", err)
	}
	px, errx := x.p.Punch(pctx, in)
	took := time.Since(start)
	ry := <-acc
	if errx != nil || ry.err != nil {
		return fmt.Errorf("punch: %v / %v", errx, ry.err)
	}
	b.onClose(func() { px.Close(); ry.pa.Close() })
	dialer, server, pa := x, y, px
	if ry.pa.Dials {
		dialer, server, pa = y, x, ry.pa
	}
	w, err := startWorkloads(b, server.host)
	if err != nil {
		return err
	}
	srv, err := transport.NewQUICServer(transport.QUICServerConfig{Transport: server.tr, Dialer: w,
		TLS: server.src.ServerConfig(identity.AuthorizeNode(), identity.ALPNMesh)})
	if err != nil {
		return err
	}
	go srv.Serve(context.Background())
	b.onClose(func() { srv.Close() })
	cli, err := transport.NewQUICClient(transport.QUICClientConfig{Transport: dialer.tr,
		TLS:        dialer.src.ClientConfig(identity.AuthorizeNode(), identity.ALPNMesh),
		SourceNode: dialer.name, DialTimeout: 10 * time.Second,
		PeerID: func(string) spiffeid.ID { return server.id }})
	if err != nil {
		return err
	}
	b.onClose(func() { cli.Close() })
	addr := pa.MeshAddr()
	b.punchInfo = fmt.Sprintf("introduced and punched in %s; %s dials %s (RTT %s)", took.Round(time.Millisecond), dialer.name, addr, pa.RTT.Round(time.Microsecond))
	b.paths = append(b.paths, &path{name: "punched",
		desc: fmt.Sprintf("%s → %s at %s (through its NAT), QUIC on the punched UDP socket", dialer.name, server.name, addr),
		dial: func(ctx context.Context, svc string) (net.Conn, error) { return cli.Dial(ctx, addr, header(svc)) }})
	return nil
}

// relayed: a1 dials c1 through the relay process; c1 accepts relayed
// sessions and serves TLS+yamux on them. Sessions from the hold node go to
// holdIn instead.
func (b *bench) relayed(ctx context.Context, a1, c1 *node) error {
	w, err := startWorkloads(b, c1.host)
	if err != nil {
		return err
	}
	ln := newChanListener()
	srv, err := transport.NewServer(transport.ServerConfig{Listener: ln, Dialer: w,
		TLS: c1.src.ServerConfig(identity.AuthorizeNode(), identity.ALPNMesh)})
	if err != nil {
		return err
	}
	go srv.Serve(context.Background())
	b.onClose(func() { srv.Close() })
	actx, acancel := context.WithCancel(context.Background())
	b.onClose(acancel)
	go func() {
		for {
			select {
			case in := <-c1.rc.Incoming():
				go func() {
					sctx, cancel := context.WithTimeout(actx, 20*time.Second)
					defer cancel()
					conn, err := c1.rc.AcceptSession(sctx, in.Session)
					if err != nil {
						logf("c1: accept relayed session from %s: %v", in.Peer, err)
						return
					}
					to := ln.c
					if in.Peer != a1.id.String() {
						to = b.holdIn
					}
					select {
					case to <- conn:
					case <-actx.Done():
						conn.Close()
					}
				}()
			case <-actx.Done():
				return
			}
		}
	}()
	cli := transport.NewClient(transport.ClientConfig{
		TLS:        a1.src.ClientConfig(identity.AuthorizeNode(), identity.ALPNMesh),
		SourceNode: a1.name, DialTimeout: 15 * time.Second,
		Network: relayNetwork{rc: a1.rc, peer: c1.id},
		PeerID:  func(string) spiffeid.ID { return c1.id },
	})
	b.onClose(func() { cli.Close() })
	const addr = "198.51.100.23:1" // the client's key for the session; never dialled
	b.paths = append(b.paths, &path{name: "relayed",
		desc: fmt.Sprintf("a1 → c1 through `fogmesh relay` at %s (TCP both legs), TLS+yamux end to end inside", b.relayAddr),
		dial: func(ctx context.Context, svc string) (net.Conn, error) { return cli.Dial(ctx, addr, header(svc)) }})
	return nil
}
