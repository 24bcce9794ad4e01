package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
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
		TLS: l2.src.ServerConfig(identity.AuthorizeNode(), identity.ALPNMesh), PeerStreams: holdAny()})
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
		TLS: server.src.ServerConfig(identity.AuthorizeNode(), identity.ALPNMesh), PeerStreams: holdAny()})
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
		TLS: c1.src.ServerConfig(identity.AuthorizeNode(), identity.ALPNMesh), PeerStreams: holdAny()})
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

// relayedUDP: a1 binds a UDP channel to b1 (site B, the symmetric NAT,
// where punching fails) on the relay; b1 opens its side. The relay
// forwards sealed datagrams between the two channel sockets and the mesh
// runs over QUIC end to end on them, as internal/paths does after a
// failed punch: a1's QUICClient dials b1's QUICServer at the channel's
// peer address (the relay's UDP port).
func (b *bench) relayedUDP(ctx context.Context, a1, b1 *node) error {
	for _, n := range []*node{a1, b1} {
		n.rc.SetUDPOptions(relay.UDPOptions{ListenPacket: n.host.ListenPacket})
	}
	bctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	type opened struct {
		ch  *relay.UDPChannel
		err error
	}
	acc := make(chan opened, 1)
	go func() {
		select {
		case in := <-b1.rc.UDPIncoming():
			ch, err := in.Open(bctx)
			acc <- opened{ch, err}
		case <-bctx.Done():
			acc <- opened{nil, fmt.Errorf("no incoming channel: %w", bctx.Err())}
		}
	}()
	start := time.Now()
	cha, err := a1.rc.BindUDP(bctx, b1.id.String())
	if err != nil {
		<-acc
		return fmt.Errorf("bind: %w", err)
	}
	b.onClose(func() { cha.Close() })
	ob := <-acc
	if ob.err != nil {
		return fmt.Errorf("b1 open: %w", ob.err)
	}
	chb := ob.ch
	b.onClose(func() { chb.Close() })
	if err := cha.WaitPeer(bctx); err != nil {
		return err
	}
	took := time.Since(start)
	// Closers run last first: the transports close before their channels.
	tra, trb := transport.NewQUICTransport(cha), transport.NewQUICTransport(chb)
	b.onClose(func() { tra.Close(); trb.Close() })
	w, err := startWorkloads(b, b1.host)
	if err != nil {
		return err
	}
	srv, err := transport.NewQUICServer(transport.QUICServerConfig{Transport: trb, Dialer: w,
		TLS: b1.src.ServerConfig(identity.AuthorizeNode(), identity.ALPNMesh), PeerStreams: holdAny()})
	if err != nil {
		return err
	}
	go srv.Serve(context.Background())
	b.onClose(func() { srv.Close() })
	cli, err := transport.NewQUICClient(transport.QUICClientConfig{Transport: tra,
		TLS:        a1.src.ClientConfig(identity.AuthorizeNode(), identity.ALPNMesh),
		SourceNode: a1.name, DialTimeout: 10 * time.Second,
		PeerID: func(string) spiffeid.ID { return b1.id }})
	if err != nil {
		return err
	}
	b.onClose(func() { cli.Close() })
	addr := cha.PeerAddr().String()
	b.udpInfo = fmt.Sprintf("channel %s bound by a1 and opened by b1 in %s; both sides send to the relay's UDP port %s", cha.Channel()[:8], took.Round(time.Millisecond), addr)
	b.udpDropped = func() string {
		return fmt.Sprintf("a1 %d, b1 %d", cha.Dropped(), chb.Dropped())
	}
	b.paths = append(b.paths, &path{name: "relayed-udp",
		desc: fmt.Sprintf("a1 → b1 (symmetric NAT) through `fogmesh relay`'s UDP channel at %s, QUIC end to end on the channel (the relay forwards sealed datagrams)", addr),
		dial: func(ctx context.Context, svc string) (net.Conn, error) { return cli.Dial(ctx, addr, header(svc)) }})
	return nil
}

// holdAny is the mesh servers' per-peer stream cap: none, so that -hold
// can open up to 10,000 streams between the bench's one pair of nodes.
func holdAny() *transport.PeerStreams { return transport.NewPeerStreams(-1, -1, nil) }
