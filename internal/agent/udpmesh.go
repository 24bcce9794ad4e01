package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fogmesh/fogmesh/internal/transport"
	"github.com/fogmesh/fogmesh/internal/udpframe"
)

// The destination side of a udp flow across the mesh: a mesh stream whose
// header says udp (transport.Header.UDP) is authorized as a TCP stream is
// (DialLocal: authorizeStream, once per flow), then relayed here to the
// workload over a connected UDP socket, datagrams framed on the stream
// by package udpframe. A stream marked udp to a port that is not udp, or
// one not marked udp to a udp port, is refused: neither side would
// understand the other's bytes.
//
// The source agent decides when a flow is idle and closes the stream;
// this side closes it after twice the service's idle timeout as a safety
// net (a source that vanished with its session still up), and at once
// when the workload refuses (ICMP port unreachable), which is then a
// failed connect for outlier detection, as a refused TCP dial is.

// udpLocal is the workload side of a udp mesh stream, from DialLocal.
type udpLocal struct {
	*net.UDPConn
	sv *serviceView // nil when the service left the view
	ev *endpointView
}

// dialLocalUDP is DialLocal for udp: udp reports whether the stream is a
// udp one (marked, or to a udp port); if so c or err is DialLocal's
// answer.
func (a *Agent) dialLocalUDP(ctx context.Context, h transport.Header) (udp bool, c net.Conn, err error) {
	sv := a.view.Load().services[h.Namespace+"/"+h.Service]
	// A peer can hold this node's endpoint before this agent holds the
	// service: the control plane sends the endpoint on as soon as this
	// agent registered it, while this agent may still be applying its
	// first configuration. Refusing then sent a peer's first flow to
	// another tier, where it stayed (TestUDPAcrossMesh). A TCP stream is
	// served without the service (DialLocal); so is a udp one: the
	// source's view says udp, and only a workload of the service
	// registered here is dialed (below). Once both views hold the
	// service, they must agree.
	isUDPPort := sv == nil && h.UDP || sv != nil && protoOf(sv, h.Port) == "udp"
	switch {
	case !h.UDP && !isUDPPort:
		return false, nil, nil
	case !h.UDP:
		return true, nil, fmt.Errorf("%w: %s/%s port %s is udp, the stream is not", transport.ErrUnknownDestination, h.Namespace, h.Service, h.Port)
	case !isUDPPort:
		return true, nil, fmt.Errorf("%w: %s/%s port %s is not a udp port", transport.ErrUnknownDestination, h.Namespace, h.Service, h.Port)
	}
	a.mu.Lock()
	ws := a.workloads[h.Endpoint]
	a.mu.Unlock()
	if ws == nil || ws.w.Service != h.Service || ws.w.Namespace != h.Namespace {
		return true, nil, fmt.Errorf("%w: %s/%s endpoint %s", transport.ErrUnknownDestination, h.Namespace, h.Service, h.Endpoint)
	}
	e := ws.w.endpoint(a.cfg.Node.Name, true)
	addr, err := a.endpointAddr(&e, h.Port, true)
	if err != nil {
		return true, nil, fmt.Errorf("%w: %v", transport.ErrUnknownDestination, err)
	}
	uc, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(addr))
	if err != nil {
		return true, nil, fmt.Errorf("udp %s: %w", addr, err)
	}
	return true, &udpLocal{UDPConn: uc, sv: sv, ev: &endpointView{key: e.Meta.Key(), ep: &e, local: true}}, nil
}

// relayUDP relays one flow's framed datagrams between a mesh stream and
// the workload until either ends, the flow is idle or ctx is done.
func (a *Agent) relayUDP(ctx context.Context, h transport.Header, stream net.Conn, u *udpLocal) {
	m := &a.udpm().dst
	m.active.Add(1)
	defer m.active.Add(-1)
	m.result("ok")
	var once sync.Once
	end := func() { once.Do(func() { stream.Close(); u.Close() }) }
	defer end()
	stop := context.AfterFunc(ctx, end)
	defer stop()

	idle := defaultUDPIdle
	if u.sv != nil && u.sv.svc.Spec.Timeouts.Idle > 0 {
		idle = time.Duration(u.sv.svc.Spec.Timeouts.Idle)
	}
	idle *= 2
	var last atomic.Int64
	touch := func() { last.Store(time.Now().UnixNano()) }
	touch()
	var timerMu sync.Mutex // orders the timer's assignment before its first run
	var timer *time.Timer
	timerMu.Lock()
	timer = time.AfterFunc(idle, func() {
		if left := idle - time.Duration(time.Now().UnixNano()-last.Load()); left > 0 {
			timerMu.Lock()
			timer.Reset(left)
			timerMu.Unlock()
			return
		}
		m.idle.Inc()
		end()
	})
	timerMu.Unlock()
	defer func() { timerMu.Lock(); timer.Stop(); timerMu.Unlock() }()
	refused := func(err error) {
		if errors.Is(err, syscall.ECONNREFUSED) && u.sv != nil {
			a.connectFailed(u.sv, u.ev) // seen by a peer first: a passive failure here too
		}
	}
	maxDgram := a.cfg.UDP.withDefaults().MaxDatagram

	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // workload -> stream
		defer wg.Done()
		defer end()
		buf := make([]byte, maxDgram+1) // one byte more: tells oversize
		var frame []byte
		for {
			n, err := u.Read(buf)
			if err != nil {
				refused(err)
				return
			}
			if n > maxDgram {
				m.drop("oversize")
				continue
			}
			frame, _ = udpframe.Append(frame[:0], buf[:n])
			if _, err := stream.Write(frame); err != nil {
				return
			}
			touch()
			m.down(n)
		}
	}()
	r := udpframe.NewReader(stream, maxDgram)
	buf := make([]byte, maxDgram)
	for {
		n, err := r.Next(buf)
		if errors.Is(err, udpframe.ErrTooLarge) {
			m.drop("oversize")
			continue
		}
		if err != nil {
			break
		}
		touch()
		if _, err := u.Write(buf[:n]); err != nil {
			refused(err)
			if !errors.Is(err, syscall.ECONNREFUSED) {
				m.drop("send_error")
			}
			break
		}
		m.up(n)
	}
	end()
	wg.Wait()
	a.log.Debug("agent: udp mesh flow ended", "dest", h.String())
}

// pinned logs the endpoint a flow keeps while it is busy and why: its
// tier, and how many candidates before it failed (each logged itself).
func (f *udpFlow) pinned(sv *serviceView, ev *endpointView, failedOver, cands int) {
	f.p.a.log.Debug("agent: udp flow pinned", "service", sv.svc.Meta.Key(), "client", f.client, "endpoint", ev.key,
		"tier", ev.tier, "failedOver", failedOver, "candidates", cands)
}
