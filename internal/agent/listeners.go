package agent

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The VIP listeners: one per virtual IP and port of the view, bound before
// the view is published, served (accepted from) only after it is.

// vipListener accepts connections on one virtual IP and port.
type vipListener struct {
	ln     net.Listener
	done   chan struct{}
	once   sync.Once
	served bool // its acceptLoop runs (guarded by the agent's mu)
}

func (l *vipListener) close() {
	l.once.Do(func() { l.ln.Close() })
	<-l.done
}

// reconcileListenersLocked opens a listener for every VIP:port in v (the
// view published) and closes those no longer there. Established
// connections are not touched.
func (a *Agent) reconcileListenersLocked(v *view) {
	a.openListenersLocked(v)
	a.serveListenersLocked(v)
}

// testHookListening, when set (tests), runs at the end of
// openListenersLocked: the new listeners are bound, v is not yet published.
var testHookListening atomic.Pointer[func(*Agent, *view)]

// openListenersLocked binds a listener for every VIP:port of v that has none
// (one that failed before is tried again). rebuildLocked calls it before it
// publishes v, so a VIP in the published view takes connections (the
// kernel queues them); serveListenersLocked accepts them only once v is
// published, so that no connection is served by the view before, which
// does not know its VIP (it would be closed unread: a reset). Before Run
// (no run context) nothing is bound: Run binds, then starts serving.
func (a *Agent) openListenersLocked(v *view) {
	defer func() {
		if h := testHookListening.Load(); h != nil {
			(*h)(a, v)
		}
	}()
	if a.runCtx == nil || a.runCtx.Err() != nil {
		return
	}
	a.reconcileUDPLocked(v) // udp ports: udp.go
	for ap, t := range v.byVIP {
		a.fastListen(ap, t) // and again when the port's protocol changes
		if a.listeners[ap] != nil || t.proto == "udp" {
			continue
		}
		ln, err := listenVIP(a.runCtx, ap)
		if err != nil {
			a.noteBindFailLocked(ap, t, err) // reported, and retried with backoff (vipbind.go)
			continue
		}
		a.noteBoundLocked(ap)
		l := &vipListener{ln: ln, done: make(chan struct{})}
		a.listeners[ap] = l
	}
}

// serveListenersLocked starts accepting on the listeners
// openListenersLocked bound, and closes the listeners of VIP:ports not in
// v; both once v is published (so no name or route points at a listener
// closed, and every connection accepted finds its VIP in the view). Under
// the same hold of the agent's mu as openListenersLocked: shutdown closes
// only listeners that are served (vipListener.close waits for the loop).
func (a *Agent) serveListenersLocked(v *view) {
	a.serveUDPLocked()
	for ap, l := range a.listeners {
		if !l.served {
			l.served = true
			a.wg.Add(1)
			go a.acceptLoop(a.runCtx, ap, l)
		}
	}
	if a.runCtx == nil || a.runCtx.Err() != nil {
		return // shutdown closes them all
	}
	for ap, l := range a.listeners {
		if t, ok := v.byVIP[ap]; !ok || t.proto == "udp" {
			a.fastUnlisten(ap)
			go l.close()
			delete(a.listeners, ap)
		}
	}
	a.forgetBindFailsLocked(v)
}

// listenVIP listens on a virtual IP.
func listenVIP(ctx context.Context, ap netip.AddrPort) (net.Listener, error) {
	lc := vipListenConfig(ap)
	return lc.Listen(ctx, "tcp", ap.String())
}

// vipListenConfig binds a socket on a virtual IP. IPv6 VIPs are not
// assigned to any interface (the operator routes the range to lo with a
// local route); Linux binds IPv6 only to assigned addresses unless the
// socket is IPV6_FREEBIND.
func vipListenConfig(ap netip.AddrPort) net.ListenConfig {
	var lc net.ListenConfig
	if ap.Addr().Is6() {
		lc.Control = func(network, address string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_FREEBIND, 1)
			})
			if err != nil {
				return err
			}
			return serr
		}
	}
	return lc
}

func (a *Agent) acceptLoop(ctx context.Context, ap netip.AddrPort, l *vipListener) {
	defer a.wg.Done()
	defer close(l.done)
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return
			}
			// EMFILE and friends: back off and keep the VIP alive.
			a.m.listenErrors.Inc()
			time.Sleep(50 * time.Millisecond)
			continue
		}
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			defer a.recoverConn(c)
			a.handleConn(ctx, ap, c)
		}()
	}
}

// closeHTTPServers closes the Workload API and site gateway servers, then
// the admin, gateway and Workload API listeners themselves (after the
// admin server's Shutdown, which shutdown calls first): an http.Server's
// Shutdown and Close close only the listeners it serves, so without Run
// (Close before it, or Run after Close, which starts nothing) they stayed
// open, the admin port accepting connections nothing would answer.
// Closed after their servers, a Serve ending now returns
// http.ErrServerClosed, not the listener's error; one starting now does
// too.
func (a *Agent) closeHTTPServers() {
	if a.wlAPI != nil {
		a.wlAPI.Close()
	}
	if a.gateway != nil {
		a.gateway.Close()
	}
	for _, ln := range []net.Listener{a.adminLn, a.gatewayLn, a.wlLn} {
		if ln != nil {
			ln.Close()
		}
	}
}
