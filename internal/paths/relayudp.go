package paths

import (
	"context"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/relay"
	"github.com/fogmesh/fogmesh/internal/transport"
)

// A relayed path over UDP: when a punch to a peer fails (a symmetric NAT)
// but UDP gets out of both sites, the relay forwards QUIC datagrams
// between the two agents on a UDP channel (relay.UDPChannel), and the mesh
// runs over QUIC end to end through it, as on a punched path. It replaces
// the relayed TCP session for new streams (the TCP one is retired), and
// is itself a Relayed path: Status shows it with Carrier "udp".

// bindUDPTimeout bounds binding a channel: a site whose UDP does not get
// out fails within it and stays on TCP.
const bindUDPTimeout = 3 * time.Second

// udpRelayed is the QUIC mesh over one UDP channel.
type udpRelayed struct {
	ch     *relay.UDPChannel
	relay  string
	tr     *quic.Transport
	client *transport.QUICClient
	server *transport.QUICServer
	served chan struct{}
	once   sync.Once
}

func (r *udpRelayed) addr() string { return r.ch.PeerAddr().String() }

func (r *udpRelayed) alive() bool {
	select {
	case <-r.ch.Done():
		return false
	default:
		return true
	}
}

// close ends the QUIC mesh, then the channel (the transport before its
// socket).
func (r *udpRelayed) close() {
	r.once.Do(func() {
		r.server.Close()
		<-r.served
		r.client.Close()
		r.tr.Close()
		r.ch.Close()
	})
}

// openUDPRelayed runs the QUIC mesh on ch, to the peer with identity id.
func (m *Manager) openUDPRelayed(ch *relay.UDPChannel, via string, id spiffeid.ID) (*udpRelayed, error) {
	tr := transport.NewQUICTransport(ch)
	cli, srv, served, err := m.quicMesh(tr, func(string) spiffeid.ID { return id })
	if err != nil {
		tr.Close()
		return nil, err
	}
	return &udpRelayed{ch: ch, relay: via, tr: tr, client: cli, server: srv, served: served}, nil
}

// bindUDP asks the relays for a UDP channel to st after a punch failed,
// and makes it st's path (the binder's side).
func (m *Manager) bindUDP(st *peerState) {
	m.mu.Lock()
	id := st.ID
	m.mu.Unlock()
	ctx, cancel := context.WithTimeout(m.ctx, bindUDPTimeout)
	defer cancel()
	ch, via, err := m.pool.BindUDP(ctx, id.String())
	if err == nil {
		err = ch.WaitPeer(ctx)
		if err != nil {
			ch.Close()
		}
	}
	if err != nil {
		m.log.Info("paths: no UDP channel through the relay; staying on TCP", "peer", st.Name, "err", err)
		return
	}
	m.installUDPRelayed(st, ch, via, id)
}

// acceptUDP takes the UDP channels peers bind to this node: the peer's
// streams arrive on its QUIC server, and this node's own streams to the
// peer take it too.
func (m *Manager) acceptUDP() {
	defer m.wg.Done()
	for {
		select {
		case <-m.ctx.Done():
			return
		case in := <-m.pool.UDPIncoming():
			id, err := spiffeid.FromString(in.Peer)
			if err != nil {
				continue
			}
			_, name, ok := identity.ParseNodeID(id)
			if !ok || (m.cfg.Known != nil && !m.cfg.Known(name, id)) {
				m.mIntroDropped.Inc()
				continue
			}
			ctx, cancel := context.WithTimeout(m.ctx, bindUDPTimeout)
			ch, err := in.Open(ctx)
			cancel()
			if err != nil {
				m.log.Info("paths: peer's UDP channel not opened", "peer", name, "err", err)
				continue
			}
			m.mu.Lock()
			st := m.peers[name]
			if st == nil {
				st = m.newPeerLocked(Peer{Name: name, ID: id})
			}
			m.mu.Unlock()
			m.installUDPRelayed(st, ch, in.Relay, id)
		}
	}
}

// installUDPRelayed makes ch st's relayed path for new streams, retiring a
// relayed TCP session; the path is dropped when the channel ends.
func (m *Manager) installUDPRelayed(st *peerState, ch *relay.UDPChannel, via string, id spiffeid.ID) {
	r, err := m.openUDPRelayed(ch, via, id)
	if err != nil {
		ch.Close()
		m.log.Error("paths: QUIC over a UDP channel", "peer", st.Name, "err", err)
		return
	}
	m.mu.Lock()
	if m.closed || st.ID != id || (st.relUDP != nil && st.relUDP.alive() && m.binder(st.relUDP) < m.binder(r)) {
		// When both sides bound one at once, both keep the channel of
		// the node whose ID sorts first, and close the other.
		m.mu.Unlock()
		r.close()
		return
	}
	old := st.relUDP
	st.relUDP = r
	prev := st.kind
	if prev == Relayed || prev == "" {
		st.kind, st.relay, st.since = Relayed, via, time.Now()
	}
	m.wg.Add(1) // under mu: Close sets closed before it waits
	m.mu.Unlock()
	if old != nil {
		old.close()
	}
	if prev == Relayed {
		m.tcp.Retire(relayKey(st.Name))
	}
	m.log.Info("paths: relayed path over UDP", "peer", st.Name, "relay", via)
	go func() {
		defer m.wg.Done()
		select {
		case <-ch.Done():
		case <-m.ctx.Done():
		}
		m.dropUDPRelayed(st, r)
	}()
}

// binder is the SPIFFE ID of the node that bound r's channel.
func (m *Manager) binder(r *udpRelayed) string {
	if r.ch.Binder() {
		return m.cfg.SelfID.String()
	}
	return r.ch.Peer()
}

// dropUDPRelayed ends r if it is still st's path; new streams go back to
// the TCP relay.
func (m *Manager) dropUDPRelayed(st *peerState, r *udpRelayed) {
	m.mu.Lock()
	mine := st.relUDP == r
	if mine {
		st.relUDP = nil
		if st.kind == Relayed { // new streams take the TCP relay again
			st.relay, st.since = st.viaRelay, time.Now()
		}
	}
	m.mu.Unlock()
	if mine && m.ctx.Err() == nil {
		m.log.Info("paths: relayed UDP path ended", "peer", st.Name, "relay", r.relay, "err", r.ch.Err())
	}
	r.close()
}

// dialUDPRelayed opens the stream over st's relayed UDP path, if it has
// one and new streams take the relay (done false: it has none, or it died
// and was dropped: find another).
func (m *Manager) dialUDPRelayed(ctx context.Context, st *peerState, h transport.Header) (net.Conn, error, bool) {
	m.mu.Lock()
	r := st.relUDP
	use := r != nil && st.kind == Relayed
	m.mu.Unlock()
	if !use {
		return nil, nil, false
	}
	c, err := r.client.Dial(ctx, r.addr(), h)
	if err == nil || peerAnswered(err) {
		m.mDials[Relayed].Inc()
		m.maybePunch(st) // a relayed path is tried again for a punched one
		return c, err, true
	}
	if gaveUp(ctx) || (r.alive() && r.client.Alive(r.addr())) {
		return nil, err, true // not the path's fault (see dialPunched)
	}
	m.log.Info("paths: relayed UDP path lost", "peer", st.Name, "relay", r.relay, "err", err)
	m.dropUDPRelayed(st, r)
	return nil, nil, false
}
