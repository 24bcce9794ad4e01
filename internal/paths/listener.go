package paths

import (
	"context"
	"net"
	"sync"
	"time"
)

// acceptTimeout bounds opening this side of a relayed session.
const acceptTimeout = 5 * time.Second

// Listener returns the agent's mesh listener: ln's TCP connections and
// the sessions peers open to this agent through any relay, one stream of
// connections for the mesh server (whose TLS runs inside both). Closing
// it closes ln.
func (m *Manager) Listener(ln net.Listener) net.Listener {
	l := &listener{Listener: ln, conns: make(chan net.Conn), tempErrs: make(chan error), done: make(chan struct{})}
	go l.acceptTCP()
	m.mu.Lock()
	serveRelayed := m.pool != nil && !m.closed // after Close, nothing would wait for it
	if serveRelayed {
		m.wg.Add(1) // under mu: before Close's Wait, or not at all
	}
	m.mu.Unlock()
	if serveRelayed {
		go func() {
			defer m.wg.Done()
			for {
				select {
				case <-m.ctx.Done():
					return
				case <-l.done:
					return
				case in := <-m.pool.Incoming():
					m.wg.Add(1)
					go func() {
						defer m.wg.Done()
						ctx, cancel := context.WithTimeout(m.ctx, acceptTimeout)
						defer cancel()
						c, err := in.Accept(ctx)
						if err != nil {
							m.log.Debug("paths: relayed session not accepted", "from", in.Peer, "relay", in.Relay, "err", err)
							return
						}
						l.deliver(c)
					}()
				}
			}
		}()
	}
	return l
}

// listener merges accepted TCP connections and relayed sessions.
type listener struct {
	net.Listener
	conns    chan net.Conn
	tempErrs chan error // ln's temporary accept errors (EMFILE...)
	done     chan struct{}
	once     sync.Once
	mu       sync.Mutex
	err      error // ln's accept error, once it failed
}

func (l *listener) acceptTCP() {
	for {
		c, err := l.Listener.Accept()
		if te, ok := err.(interface{ Temporary() bool }); ok && te.Temporary() {
			// Passed on, not fatal: the mesh server backs off and
			// accepts again, as it would on ln itself.
			select {
			case l.tempErrs <- err:
				continue
			case <-l.done:
				return
			}
		}
		if err != nil {
			l.mu.Lock()
			l.err = err
			l.mu.Unlock()
			l.Close()
			return
		}
		if !l.deliver(c) {
			return
		}
	}
}

// deliver hands c to Accept; false (c closed) once the listener is.
func (l *listener) deliver(c net.Conn) bool {
	select {
	case l.conns <- c:
		return true
	case <-l.done:
		c.Close()
		return false
	}
}

// Accept returns the next connection of either kind.
func (l *listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case err := <-l.tempErrs:
		return nil, err
	case <-l.done:
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.err != nil {
			return nil, l.err
		}
		return nil, net.ErrClosed
	}
}

// Close stops both sources.
func (l *listener) Close() error {
	var err error
	l.once.Do(func() {
		close(l.done)
		err = l.Listener.Close()
	})
	return err
}
