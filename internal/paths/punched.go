package paths

import (
	"context"
	"errors"
	"net"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/punch"
	"github.com/fogmesh/fogmesh/internal/relay"
	"github.com/fogmesh/fogmesh/internal/transport"
)

// The punched QUIC connections' liveness: a keepalive every 5 s (it also
// holds the NAT mappings) and an idle timeout of three of them, so a path
// whose peer vanished is found dead within 15 s.
const (
	quicKeepAlive = 5 * time.Second
	quicIdle      = 3 * quicKeepAlive
)

// udpSide is the punching socket and the QUIC mesh that runs over it.
type udpSide struct {
	pc      net.PacketConn
	tr      *quic.Transport
	puncher *punch.Puncher
	client  *transport.QUICClient
	server  *transport.QUICServer
	served  chan struct{}
	cands   []string
}

func (u *udpSide) close() {
	u.server.Close()
	<-u.served
	u.client.Close()
	u.puncher.Close()
	u.tr.Close()
	u.pc.Close()
}

// setPunch records why punching does or does not run.
func (m *Manager) setPunch(ready bool, reason string, cands []string) {
	m.mu.Lock()
	m.punch = punchState{ready: ready, reason: reason, cands: cands}
	m.mu.Unlock()
}

// startPunching waits for a relay, opens the UDP socket, learns its
// reflexive address from the home relay and starts the QUIC mesh on it.
// Introductions from peers are answered from then on.
func (m *Manager) startPunching() {
	defer m.wg.Done()
	if err := m.pool.WaitConnected(m.ctx, 1); err != nil {
		return
	}
	rc, home := m.pool.Home()
	if rc == nil {
		m.setPunch(false, "no home relay", nil)
		return
	}
	pc, err := net.ListenPacket("udp", m.cfg.UDPAddr)
	if err != nil {
		m.log.Error("paths: punching socket", "addr", m.cfg.UDPAddr, "err", err)
		m.setPunch(false, "punching socket: "+err.Error(), nil)
		return
	}
	relayUDP, err := net.ResolveUDPAddr("udp", home)
	if err != nil {
		pc.Close()
		m.setPunch(false, "relay UDP address: "+err.Error(), nil)
		return
	}
	cands, err := punch.Gather(m.ctx, rc, pc, relayUDP, 0)
	if err != nil {
		pc.Close()
		reason := err.Error()
		if errors.Is(err, punch.ErrUDPBlocked) {
			reason = "UDP does not get out of this site: peers are reached directly or through a relay over TCP"
		}
		m.log.Warn("paths: no punching", "reason", reason)
		m.setPunch(false, reason, cands.Strings())
		return
	}
	u, err := m.openUDP(pc)
	if err != nil {
		pc.Close()
		m.log.Error("paths: QUIC mesh", "err", err)
		m.setPunch(false, err.Error(), nil)
		return
	}
	u.cands = cands.Strings()
	if err := m.pool.SetCandidates(u.cands); err != nil {
		m.log.Warn("paths: telling the relays the candidates", "err", err)
	}
	m.mu.Lock()
	if m.ctx.Err() != nil {
		m.mu.Unlock()
		u.close()
		return
	}
	m.udp = u
	m.punch = punchState{ready: true, cands: u.cands}
	m.mu.Unlock()
	m.log.Info("paths: punching ready", "candidates", u.cands, "relay", home)
	m.wg.Add(1)
	go m.acceptUDP()
	for {
		select {
		case <-m.ctx.Done():
			return
		case in := <-m.pool.Introductions():
			m.startAnswer(u, in)
		}
	}
}

// openUDP starts the QUIC mesh on pc.
func (m *Manager) openUDP(pc net.PacketConn) (*udpSide, error) {
	tr := transport.NewQUICTransport(pc)
	p, err := punch.New(punch.Config{Transport: tr, Self: m.cfg.SelfID.String(), KeepAlive: m.cfg.KeepAlive,
		Logger: m.log})
	if err != nil {
		tr.Close()
		return nil, err
	}
	cli, srv, served, err := m.quicMesh(tr, m.punchedID)
	if err != nil {
		p.Close()
		tr.Close()
		return nil, err
	}
	return &udpSide{pc: pc, tr: tr, puncher: p, client: cli, server: srv, served: served}, nil
}

// quicMesh runs the mesh over QUIC on tr: a client that expects peerID
// at an address, and a server serving until closed (served is closed
// then). The caller closes both, then tr.
func (m *Manager) quicMesh(tr *quic.Transport, peerID func(string) spiffeid.ID) (*transport.QUICClient, *transport.QUICServer, chan struct{}, error) {
	timers := transport.QUICTimers{KeepAlive: min(m.cfg.KeepAlive, quicKeepAlive), IdleTimeout: quicIdle}
	cli, err := transport.NewQUICClient(transport.QUICClientConfig{Transport: tr, TLS: m.cfg.TLS,
		DialTimeout: m.cfg.DialTimeout, Logger: m.log, Metrics: m.cfg.Metrics, SourceNode: m.cfg.Self,
		PeerID: peerID, Timers: timers, PeerCheck: m.cfg.PeerCheck, OnCut: m.cfg.OnCut})
	if err != nil {
		return nil, nil, nil, err
	}
	srv, err := transport.NewQUICServer(transport.QUICServerConfig{Transport: tr, Dialer: m.cfg.Dialer,
		TLS: m.cfg.ServerTLS, Logger: m.log, Metrics: m.cfg.Metrics, TrustedSourceID: m.cfg.TrustedSourceID,
		Timers: timers, PeerCheck: m.cfg.PeerCheck, OnCut: m.cfg.OnCut, PeerStreams: m.cfg.PeerStreams,
		MaxHandshakes: m.cfg.MaxHandshakes, MaxHandshakesPerSource: m.cfg.MaxHandshakesPerSource})
	if err != nil {
		cli.Close()
		return nil, nil, nil, err
	}
	served := make(chan struct{})
	go func() { defer close(served); srv.Serve(context.Background()) }()
	return cli, srv, served, nil
}

// punchedID is the identity expected at a punched address.
func (m *Manager) punchedID(addr string) spiffeid.ID {
	m.mu.Lock()
	defer m.mu.Unlock()
	if st := m.peers[m.byUDP[addr]]; st != nil {
		return st.ID
	}
	return spiffeid.ID{}
}

// Bounds on answering introductions: a peer (or a relay) that asks for
// them in a loop must not make this node probe addresses it chose without
// end.
const (
	maxAnswers = 8           // answers punching at once, all peers
	answerGap  = time.Second // between the starts of two answers to one peer
)

// startAnswer punches back for an introduction a peer asked for, so both
// sides probe at once; a path found is used for this side's streams too.
// It answers only a node of the registry (Config.Known), one introduction
// per peer at a time and answerGap apart, maxAnswers at once; the rest are
// dropped and counted.
func (m *Manager) startAnswer(u *udpSide, in relay.PoolIntroduced) {
	id, err := spiffeid.FromString(in.Peer)
	if err != nil {
		m.mIntroDropped.Inc()
		return
	}
	_, name, ok := identity.ParseNodeID(id)
	if !ok || (m.cfg.Known != nil && !m.cfg.Known(name, id)) {
		m.mIntroDropped.Inc()
		m.log.Info("paths: introduction from a node not in the registry", "peer", in.Peer)
		return
	}
	m.mu.Lock()
	st := m.peers[name]
	if st == nil {
		st = m.newPeerLocked(Peer{Name: name, ID: id})
	}
	now := time.Now()
	// (A direct path of ours to the peer says nothing of its way to us:
	// answer anyway.)
	if m.closed || st.ID != id || m.answers >= maxAnswers || now.Before(st.answerAt) {
		m.mu.Unlock()
		m.mIntroDropped.Inc()
		return
	}
	m.answers++
	st.answerAt = now.Add(answerGap)
	m.wg.Add(1)
	m.mu.Unlock()
	go func() {
		defer m.wg.Done()
		pa, err := u.puncher.Punch(m.ctx, in.Introduced)
		m.mu.Lock()
		m.answers--
		m.mu.Unlock()
		if err != nil {
			m.log.Debug("paths: answering punch failed", "peer", name, "err", err)
			return
		}
		m.install(u, st, pa)
	}()
}

// maybePunch starts a punch to st in the background when its path is not
// direct and none is running or punched; after failed ones it waits
// punchBackoff (so a relayed peer, over TCP or the relay's UDP, is tried
// again while it is dialed: after 5 s, 10 s, 20 s, then every RetryAfter
// with the defaults).
func (m *Manager) maybePunch(st *peerState) {
	m.mu.Lock()
	u := m.udp
	if m.closed || u == nil || m.ctx.Err() != nil || st.kind == Direct || st.punched != nil || st.punchOn || st.ID.IsZero() {
		m.mu.Unlock()
		return
	}
	st.punchOn = true
	wait := time.Until(st.punchAt) // a punch failed lately: try again then
	m.wg.Add(1)                    // under mu: Close sets closed before it waits
	m.mu.Unlock()
	go func() {
		defer m.wg.Done()
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-m.ctx.Done():
				t.Stop()
				return
			}
		}
		m.mu.Lock()
		still := st.kind != Direct && st.punched == nil
		if !still {
			st.punchOn = false
		}
		m.mu.Unlock()
		if !still {
			return
		}
		pa, err := m.connect(u, st)
		m.mu.Lock()
		st.punchOn = false
		if err != nil {
			st.punchFails++
			st.punchAt = time.Now().Add(punchBackoff(m.cfg.RetryAfter, st.punchFails))
		} else {
			st.punchFails = 0
		}
		m.mu.Unlock()
		if err != nil {
			m.log.Info("paths: punch failed; staying on the relay", "peer", st.Name, "err", err)
			m.mu.Lock()
			bind := m.cfg.RelayUDP && st.relUDP == nil && st.kind == Relayed
			m.mu.Unlock()
			if bind { // UDP gets out of here: try the relay's UDP
				m.bindUDP(st)
			}
			return
		}
		m.install(u, st, pa)
	}()
}

// connect asks the home relay to introduce this node to st and punches.
func (m *Manager) connect(u *udpSide, st *peerState) (*punch.Path, error) {
	rc, _ := m.pool.Home()
	if rc == nil {
		return nil, errors.New("no relay connected")
	}
	ctx, cancel := context.WithTimeout(m.ctx, 5*time.Second)
	defer cancel()
	m.mu.Lock()
	id := st.ID
	m.mu.Unlock()
	return u.puncher.Connect(ctx, rc, id.String(), u.cands)
}

// install makes pa the peer's path for new streams; a relayed session is
// retired (its open streams finish on it).
func (m *Manager) install(u *udpSide, st *peerState, pa *punch.Path) {
	m.mu.Lock()
	if m.ctx.Err() != nil {
		m.mu.Unlock()
		pa.Close()
		return
	}
	// Kept even when this node's own streams go direct: the peer may
	// be punching to it now, and it is how the peer reaches this node.
	old, prev := st.punched, st.kind
	if old != nil {
		delete(m.byUDP, old.MeshAddr())
	}
	// The address may have been another peer's (a NAT reused the port):
	// that peer's path there is gone, and its connection with it.
	var stale *punch.Path
	if other := m.peers[m.byUDP[pa.MeshAddr()]]; other != nil && other != st && other.punched != nil {
		stale, other.punched = other.punched, nil
		if other.kind == Punched {
			other.kind = ""
		}
	}
	st.punched = pa
	m.byUDP[pa.MeshAddr()] = st.Name
	switch {
	case prev != "" && prev != Direct: // before the first Dial, that Dial's race decides
		st.kind, st.since, st.relay = Punched, time.Now(), ""
	case prev == "":
		st.since = time.Now() // Status shows the peer punched (current) from now
	}
	m.mu.Unlock()
	if stale != nil {
		u.client.DropSession(stale.MeshAddr())
		stale.Close()
	}
	if old != nil {
		old.Close() // its QUIC connection, if at another address, ends idle
	}
	if prev == Relayed {
		m.tcp.Retire(relayKey(st.Name))
		m.mUp.Inc()
	}
	m.log.Info("paths: punched path to peer", "peer", st.Name, "addr", pa.MeshAddr(), "rtt", pa.RTT, "was", prev)
}

// dialPunched opens the stream over st's punched path, if it has one
// (done false: it has none, or it broke and was dropped: find another).
func (m *Manager) dialPunched(ctx context.Context, st *peerState, h transport.Header) (net.Conn, error, bool) {
	m.mu.Lock()
	u, pa := m.udp, st.punched
	use := st.kind == Punched && pa != nil && m.byUDP[pa.MeshAddr()] == st.Name
	m.mu.Unlock()
	if u == nil || !use {
		return nil, nil, false
	}
	c, err := u.client.Dial(ctx, pa.MeshAddr(), h)
	if err == nil || peerAnswered(err) {
		m.mDials[Punched].Inc()
		return c, err, true
	}
	if gaveUp(ctx) || u.client.Alive(pa.MeshAddr()) {
		// The caller gave up, or the connection is alive (a slow peer
		// or workload, too many streams): the path's other streams go
		// on. A dead peer's connection ends within the QUIC idle
		// timeout (quicIdle), and then the path is dropped here.
		return nil, err, true
	}
	m.log.Info("paths: punched path lost", "peer", st.Name, "addr", pa.MeshAddr(), "err", err)
	m.mu.Lock()
	if st.punched == pa {
		st.punched, st.kind, st.lastErr = nil, "", err.Error()
		st.punchAt = time.Now().Add(m.cfg.RetryAfter / 6)
		delete(m.byUDP, pa.MeshAddr())
	}
	m.mu.Unlock()
	u.client.DropSession(pa.MeshAddr())
	pa.Close()
	return nil, nil, false
}

// punchBackoff is the wait after fails punches failed in a row: a sixth of
// retryAfter, doubling, at most retryAfter.
func punchBackoff(retryAfter time.Duration, fails int) time.Duration {
	d := retryAfter / 6
	for i := 1; i < fails && d < retryAfter; i++ {
		d *= 2
	}
	return min(d, retryAfter)
}
