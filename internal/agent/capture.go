package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/capture"
)

// Transparent capture of ClusterIP traffic (internal/capture): the agent
// owns nftables rules that redirect each ClusterIP:port of the services it
// knows to one listener, reads a connection's original destination back
// and proxies it as a connection to the service's virtual IP.

// Capture modes (CaptureConfig.Mode).
const (
	CaptureOff      = "off"      // no rules; virtual IPs and DNS names only (default)
	CaptureAuto     = "auto"     // capture where the node allows it, else fall back and say so
	CaptureRequired = "required" // capture, or refuse to start
)

// CaptureConfig configures transparent capture of ClusterIP traffic.
type CaptureConfig struct {
	// Mode is off (default), auto (capture when the agent may manage
	// nftables: root or CAP_NET_ADMIN, nftables in the kernel; otherwise
	// log why and serve virtual IPs only) or required (fail to start
	// without it).
	Mode string `json:"mode,omitempty"`
	// Addr is the capture listener (default 0.0.0.0:15001). It must listen
	// on every IPv4 address: connections redirected from pods arrive at
	// the address of the interface they came in on. A connection that
	// was not redirected to a ClusterIP is closed.
	Addr string `json:"addr,omitempty"`
	// Addr6 is the IPv6 capture listener (default [::]:15001, IPv6 only;
	// "off": IPv6 ClusterIPs are not captured). A node without IPv6 goes
	// on with IPv4 and says so in the status.
	Addr6 string `json:"addr6,omitempty"`
}

func (c *CaptureConfig) validate() error {
	switch c.Mode {
	case "":
		c.Mode = CaptureOff
	case CaptureOff, CaptureAuto, CaptureRequired:
	default:
		return fmt.Errorf("capture.mode: %q is not off, auto or required", c.Mode)
	}
	if c.Addr == "" {
		c.Addr = "0.0.0.0:15001"
	}
	if ap, err := netip.ParseAddrPort(c.Addr); err != nil || !ap.Addr().Is4() {
		return fmt.Errorf("capture.addr: %q is not an IPv4 ip:port", c.Addr)
	}
	if c.Addr6 == "" {
		c.Addr6 = "[::]:15001"
	}
	if ap, err := netip.ParseAddrPort(c.Addr6); c.Addr6 != "off" && (err != nil || !ap.Addr().Is6() || ap.Addr().Is4In6()) {
		return fmt.Errorf("capture.addr6: %q is not an IPv6 [ip]:port or off", c.Addr6)
	}
	return nil
}

// CaptureStatus is what /v1/status and describe show of capture.
type CaptureStatus struct {
	// Active is true when the rules are installed.
	Active bool   `json:"active"`
	Mode   string `json:"mode"`
	Addr   string `json:"addr,omitempty"`  // the capture listener, when active
	Addr6  string `json:"addr6,omitempty"` // the IPv6 one, when active
	// Note says why capture is off, or which ClusterIPs it skips.
	Note string `json:"note,omitempty"`
	// Destinations is how many ClusterIP:ports are redirected.
	Destinations int `json:"destinations"`
}

// captureState is the agent's capture; guarded by Agent.mu except ln and
// rules, which are set in New and only read after.
type captureState struct {
	ln     net.Listener
	ln6    net.Listener // nil: IPv6 ClusterIPs are not captured
	rules  *capture.Rules
	status CaptureStatus
	note6  string // why IPv6 ClusterIPs are not captured ("" when they are)
	// udp are the sockets of the captured UDP ClusterIP:ports, one each
	// (the map of the rules sends each to its own port).
	udp map[netip.AddrPort]*udpPort
}

// initCapture installs the rules and binds the listener (New). In auto
// mode a node that cannot capture gets a log line and a status note, not
// an error.
func (a *Agent) initCapture() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	cfg := a.cfg.Capture
	a.capture.status = CaptureStatus{Mode: cfg.Mode, Note: "capture is off (capture.mode: off): ClusterIPs are not redirected; use the virtual IPs or DNS names"}
	if cfg.Mode == CaptureOff {
		return nil
	}
	ln, err := net.Listen("tcp4", cfg.Addr)
	if err != nil {
		return fmt.Errorf("agent: capture listen: %w", err)
	}
	var ln6 net.Listener
	var port6 uint16
	no6 := ""
	if cfg.Addr6 != "off" {
		if ln6, err = net.Listen("tcp6", cfg.Addr6); err != nil {
			no6 = fmt.Sprintf("IPv6 ClusterIPs are not captured: listen %s: %v", cfg.Addr6, err)
			a.log.Warn("agent: capture: "+no6, "addr6", cfg.Addr6)
		} else {
			port6 = uint16(ln6.Addr().(*net.TCPAddr).Port)
		}
	}
	rules, err := capture.Install(capture.Config{Port: uint16(ln.Addr().(*net.TCPAddr).Port), Port6: port6})
	if err != nil {
		ln.Close()
		if ln6 != nil {
			ln6.Close()
		}
		if cfg.Mode == CaptureRequired {
			return fmt.Errorf("agent: capture required: %w", err)
		}
		why := "cannot manage nftables"
		if errors.Is(err, capture.ErrUnavailable) {
			why = "not permitted or no nftables (needs root or CAP_NET_ADMIN)"
		}
		a.capture.status.Note = fmt.Sprintf("capture off: %s: falling back to virtual IPs; ClusterIPs are not redirected (%v)", why, err)
		a.log.Warn("agent: transparent capture off, falling back to virtual IPs: ClusterIP traffic is not redirected", "why", why, "err", err)
		return nil
	}
	a.capture.ln, a.capture.ln6, a.capture.rules, a.capture.note6 = ln, ln6, rules, no6
	a.capture.status = CaptureStatus{Active: true, Mode: cfg.Mode, Addr: ln.Addr().String(), Note: no6}
	if ln6 != nil {
		a.capture.status.Addr6 = ln6.Addr().String()
	}
	a.log.Info("agent: transparent capture on: ClusterIP traffic is redirected here with nftables", "table", "inet "+capture.TableName, "listener", ln.Addr())
	a.syncCaptureLocked(a.view.Load())
	return nil
}

// syncCaptureLocked makes the rules redirect the ClusterIP:ports of v.
func (a *Agent) syncCaptureLocked(v *view) {
	if a.capture.rules == nil || v == nil || !a.capture.status.Active {
		return
	}
	dests := make([]netip.AddrPort, 0, len(v.byClusterIP))
	for d := range v.byClusterIP {
		dests = append(dests, d)
	}
	skipped, err := a.capture.rules.Sync(dests)
	if err != nil {
		a.m.listenErrors.Inc()
		a.log.Error("agent: capture rules not updated", "err", err)
		return
	}
	udpPorts := a.syncCaptureUDPLocked(v)
	skippedUDP, err := a.capture.rules.SyncUDP(udpPorts)
	if err != nil {
		a.m.listenErrors.Inc()
		a.log.Error("agent: capture rules (udp) not updated", "err", err)
		return
	}
	skipped = append(skipped, skippedUDP...)
	a.capture.status.Destinations = len(dests) + len(udpPorts) - len(skipped)
	a.capture.status.Note = a.capture.note6
	if len(skipped) > 0 {
		slices.SortFunc(skipped, netip.AddrPort.Compare)
		a.capture.status.Note = fmt.Sprintf("IPv6 ClusterIPs are not captured (%d, e.g. %s: no IPv6 listener): use the virtual IPs", len(skipped), skipped[0])
	}
}

// syncCaptureUDPLocked binds a socket for every captured UDP
// ClusterIP:port of v (on the capture listener's address, IPv6 ones on the
// IPv6 listener's: none without it), closes those no longer there, and
// returns the ports the rules redirect each to. A datagram on such a
// socket is one to the service's VIP:port, from the same client: it goes
// through the UDP flow code of the virtual IPs (udp.go), and the replies
// leave from the address the datagram came to.
func (a *Agent) syncCaptureUDPLocked(v *view) map[netip.AddrPort]uint16 {
	if a.capture.udp == nil {
		a.capture.udp = map[netip.AddrPort]*udpPort{}
	}
	for d, p := range a.capture.udp {
		if vip, ok := v.udpClusterIP[d]; !ok || vip != p.ap {
			p.close()
			delete(a.capture.udp, d)
		}
	}
	ports := map[netip.AddrPort]uint16{}
	for d, vip := range v.udpClusterIP {
		if p := a.capture.udp[d]; p != nil {
			ports[d] = uint16(p.conn.LocalAddr().(*net.UDPAddr).Port)
			continue
		}
		network, ln := "udp4", a.capture.ln
		if d.Addr().Is6() {
			network, ln = "udp6", a.capture.ln6
		}
		if ln == nil || a.runCtx == nil {
			continue // no IPv6 capture; or not running yet (start syncs again)
		}
		host, _, _ := net.SplitHostPort(ln.Addr().String())
		pc, err := capture.ListenPkt(a.runCtx, network, net.JoinHostPort(host, "0"))
		if err != nil {
			a.m.listenErrors.Inc()
			a.log.Error("agent: capture: udp socket", "clusterIP", d, "err", err)
			continue
		}
		p := &udpPort{a: a, ap: vip, conn: pc.UDPConn, pkt: pc, lim: a.cfg.UDP.withDefaults(), flows: map[netip.AddrPort]*udpFlow{}}
		p.ctx, p.cancel = context.WithCancel(a.runCtx)
		a.capture.udp[d] = p
		a.udpm()
		a.wg.Add(1)
		go p.readLoop()
		ports[d] = uint16(pc.LocalAddr().(*net.UDPAddr).Port)
	}
	return ports
}

// errLoopsBack refuses an endpoint address that leads back into this
// agent: one of its own virtual IP:ports, or, with capture on, a captured
// ClusterIP:port. Dialed, it would be accepted here and dialed again,
// without end, until the agent has no file descriptor left (a
// selectorless Kubernetes Service whose EndpointSlice names its own
// ClusterIP is enough).
var errLoopsBack = errors.New("endpoint address leads back into this agent")

// endpointAddr is e's address for port, to dial directly (TCP, or UDP
// when udp); errLoopsBack when that would come back here.
func (a *Agent) endpointAddr(e *api.Endpoint, port string, udp bool) (netip.AddrPort, error) {
	addr, err := e.AddrPort(port)
	if err != nil {
		return addr, err
	}
	if v := a.view.Load(); v != nil {
		t, vip := v.byVIP[addr]
		captured := v.byClusterIP
		if udp {
			captured = v.udpClusterIP
		}
		_, isClusterIP := captured[addr]
		if vip && (t.proto == "udp") == udp || isClusterIP && a.capture.rules != nil {
			return netip.AddrPort{}, fmt.Errorf("%w: %s", errLoopsBack, addr)
		}
	}
	return addr, nil
}

// CaptureStatus returns the state of transparent capture.
func (a *Agent) CaptureStatus() CaptureStatus {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.capture.status
}

// captureLoop accepts redirected connections on ln and hands each to
// handleConn as a connection to the service's virtual IP. It returns at
// once when ln is nil (capture off, or no IPv6 listener).
func (a *Agent) captureLoop(ctx context.Context, ln net.Listener) error {
	for ln != nil {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return nil
			}
			a.m.listenErrors.Inc()
			select { // EMFILE and friends: back off, keep capturing
			case <-ctx.Done():
				return nil
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			defer a.recoverConn(c)
			a.handleCaptured(ctx, c)
		}()
	}
	return nil
}

// handleCaptured finds the service port of a redirected connection from
// its original destination.
func (a *Agent) handleCaptured(ctx context.Context, c net.Conn) {
	orig, err := capture.Redirected(c)
	if err != nil {
		a.m.connNoEP.Inc()
		a.log.Debug("agent: capture: connection without a redirected destination", "client", c.RemoteAddr(), "err", err)
		c.Close()
		return
	}
	vip, ok := a.view.Load().byClusterIP[orig]
	if !ok { // the service went away since the rule matched
		a.m.connNoEP.Inc()
		c.Close()
		return
	}
	a.handleConn(ctx, vip, c)
}

// closeCapture removes the rules first, so new connections to ClusterIPs
// go to kube-proxy again, then closes the listener. Idempotent.
func (a *Agent) closeCapture() {
	if a.capture.rules != nil {
		if err := a.capture.rules.Remove(); err != nil {
			a.log.Error("agent: capture rules not removed", "err", err)
		}
	}
	for _, ln := range []net.Listener{a.capture.ln, a.capture.ln6} {
		if ln != nil {
			ln.Close()
		}
	}
	a.mu.Lock()
	a.capture.status.Active = false
	for d, p := range a.capture.udp {
		p.close()
		delete(a.capture.udp, d)
	}
	a.mu.Unlock()
}
