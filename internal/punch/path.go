package punch

import (
	"net/netip"
	"sync"
	"time"
)

// Path is a punched path: the peer answers probes at Addr from this
// node's socket. Run the QUIC carrier to it: if Dials, dial
// MeshAddr with a transport.QUICClient on the same Transport (checking
// the peer's certificate names Peer); otherwise the peer dials this
// node's transport.QUICServer. Close when the path is no longer used.
type Path struct {
	Peer  string
	Addr  netip.AddrPort
	RTT   time.Duration
	Dials bool

	p    *Puncher
	s    *session
	stop chan struct{}
	done chan struct{}
	once sync.Once
}

func (p *Puncher) newPath(s *session) *Path {
	p.mu.Lock()
	pa := &Path{Peer: s.peer, Addr: s.winner, RTT: s.rtt, Dials: s.role == 0, p: p, s: s,
		stop: make(chan struct{}), done: make(chan struct{})}
	p.mu.Unlock()
	go pa.keepAlive()
	return pa
}

// MeshAddr is Addr as the QUIC client's mesh address.
func (pa *Path) MeshAddr() string { return pa.Addr.String() }

// LastSeen is when the peer's last valid probe (request or answer)
// arrived.
func (pa *Path) LastSeen() time.Time {
	pa.p.mu.Lock()
	defer pa.p.mu.Unlock()
	return pa.s.last
}

// keepAlive probes the peer every KeepAlive: the request refreshes this
// side's NAT mapping and the answer the peer's.
func (pa *Path) keepAlive() {
	defer close(pa.done)
	t := time.NewTicker(pa.p.cfg.KeepAlive)
	defer t.Stop()
	for {
		select {
		case <-pa.stop:
			return
		case <-pa.p.ctx.Done():
			return
		case <-t.C:
			pa.p.probe(pa.s, pa.Addr)
		}
	}
}

// Close stops the keepalives and the answers to the peer's probes.
func (pa *Path) Close() error {
	pa.once.Do(func() {
		close(pa.stop)
		<-pa.done
		pa.p.unregister(pa.s)
	})
	return nil
}
