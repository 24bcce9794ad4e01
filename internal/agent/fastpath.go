package agent

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/fogmesh/fogmesh/internal/fastpath"
	"github.com/fogmesh/fogmesh/internal/proxy"
)

// FastPathConfig is the kernel fast path for same-node TCP (package
// fastpath): a local client's connection to a service's `tcp` port, relayed
// to an endpoint on this node, is handed to a BPF sockmap once the agent
// has chosen the endpoint and authorized the connection. Its bytes then go
// from one socket to the other in the kernel, without waking the agent.
type FastPathConfig struct {
	// Mode is off (default), auto (load it when the kernel and privileges
	// allow: root, BPF sockmap, cgroup v2; otherwise log why and relay in
	// the agent) or required (fail to start without it).
	Mode string `json:"mode,omitempty"`
	// Cgroup is the cgroup v2 directory whose processes' connections are
	// tracked (default: the mounted cgroup v2 hierarchy's root; with none
	// mounted, one is mounted under the state directory).
	Cgroup string `json:"cgroup,omitempty"`
}

// Fast path modes (the same words as capture's).
const (
	FastPathOff      = "off"
	FastPathAuto     = "auto"
	FastPathRequired = "required"
)

func (c *FastPathConfig) validate() error {
	switch c.Mode {
	case "":
		c.Mode = FastPathOff
	case FastPathOff, FastPathAuto, FastPathRequired:
	default:
		return fmt.Errorf("fastPath.mode: %q is not off, auto or required", c.Mode)
	}
	return nil
}

// FastPathStatus is what /v1/status shows of the fast path.
type FastPathStatus struct {
	Active bool   `json:"active"`
	Mode   string `json:"mode"`
	Cgroup string `json:"cgroup,omitempty"`
	Note   string `json:"note,omitempty"`
}

// fastPathState is the agent's fast path: nil fp when off or unavailable.
type fastPathState struct {
	fp        *fastpath.FastPath
	status    FastPathStatus
	listening map[netip.AddrPort]bool // VIP:ports registered with fp (a.mu)

	kernelConns, agentConns *metrics.Counter // tcp pairs to local endpoints, by path
	gaveUp                  *metrics.Counter // kernel pairs that left the kernel path while open
	kernelUp, kernelDown    *metrics.Counter // bytes the kernel moved past the agent
}

// initFastPath loads the fast path (New). In auto mode a node that cannot
// load it gets a log line and a status note, not an error.
func (a *Agent) initFastPath() error {
	cfg := a.cfg.FastPath
	st := &a.fast
	m := a.cfg.Metrics
	st.kernelConns = m.NewCounter(`fogmesh_agent_fastpath_connections_total{path="kernel"}`)
	st.agentConns = m.NewCounter(`fogmesh_agent_fastpath_connections_total{path="agent"}`)
	st.gaveUp = m.NewCounter(`fogmesh_agent_fastpath_gave_up_total`)
	st.kernelUp = m.NewCounter(`fogmesh_agent_fastpath_bytes_total{direction="client_to_endpoint"}`)
	st.kernelDown = m.NewCounter(`fogmesh_agent_fastpath_bytes_total{direction="endpoint_to_client"}`)
	m.NewGauge(`fogmesh_agent_fastpath_active`, func() float64 {
		if st.fp != nil {
			return 1
		}
		return 0
	})
	st.status = FastPathStatus{Mode: cfg.Mode, Note: "fast path is off (fastPath.mode: off): same-node TCP is relayed by the agent"}
	if cfg.Mode == FastPathOff {
		return nil
	}
	fp, err := fastpath.Open(cfg.Cgroup, filepath.Join(a.cfg.StateDir, "cgroup2"))
	if err != nil {
		if cfg.Mode == FastPathRequired {
			return fmt.Errorf("agent: fast path required: %w", err)
		}
		st.status.Note = fmt.Sprintf("fast path off: %v (needs root, BPF sockmap and cgroup v2); same-node TCP is relayed by the agent", err)
		a.log.Warn("agent: kernel fast path off, relaying same-node TCP in the agent", "err", err)
		return nil
	}
	st.fp, st.listening = fp, map[netip.AddrPort]bool{}
	st.status = FastPathStatus{Active: true, Mode: cfg.Mode, Cgroup: fp.Cgroup()}
	a.log.Info("agent: kernel fast path on", "cgroup", fp.Cgroup())
	// A kernel whose sockmap hides a tracked socket's bytes from FIONREAD
	// (fastpath.ReadableCountWorks): said at start and in /v1/status.
	if works, err := fp.ReadableCountWorks(); err != nil {
		a.log.Warn("agent: kernel fast path: FIONREAD probe failed", "err", err)
	} else if !works {
		st.status.Note = "on this kernel a local client's or endpoint's socket that the fast path tracks reads 0 from FIONREAD (SIOCINQ) while bytes wait; reads are not affected, but a workload that sizes its reads by it (Java's available()) should not use the fast path"
		a.log.Warn("agent: kernel fast path: tracked sockets read 0 from FIONREAD on this kernel; workloads that size reads by it (Java's available()) should not use the fast path")
	}
	return nil
}

// initKernelPaths loads the fast path, then installs capture (New).
func (a *Agent) initKernelPaths() error {
	if err := a.initFastPath(); err != nil {
		return err
	}
	return a.initCapture()
}

// closeKernelPaths undoes initKernelPaths (a failed New).
func (a *Agent) closeKernelPaths() {
	a.closeCapture()
	a.closeFastPath()
}

// closeFastPath detaches the programs (shutdown, after the listeners).
func (a *Agent) closeFastPath() {
	if a.fast.fp != nil {
		a.fast.fp.Close()
	}
}

// FastPathStatus returns the state of the kernel fast path.
func (a *Agent) FastPathStatus() FastPathStatus { return a.fast.status }

// fastListen registers a plain TCP (or detected) port's VIP with the fast
// path, so local clients' connections to it are tracked from their first
// byte, and unregisters one whose protocol became another (a.mu held).
func (a *Agent) fastListen(ap netip.AddrPort, t listenTarget) {
	if a.fast.fp == nil {
		return
	}
	want := t.proto == "tcp" || t.proto == "auto"
	if a.fast.listening[ap] == want {
		return
	}
	if !want {
		a.fastUnlisten(ap)
		return
	}
	if err := a.fast.fp.AddListener(ap); err != nil {
		a.log.Warn("agent: fast path: listener not tracked", "addr", ap, "err", err)
		return
	}
	a.fast.listening[ap] = true
}

// replayDetected gives a connection detected as L7 or MQTT on an auto
// port its first bytes back, and untracks it: the agent serves it itself.
func (a *Agent) replayDetected(client net.Conn, peeked []byte) (net.Conn, []byte) {
	if tc, ok := client.(*net.TCPConn); ok && a.fast.fp != nil {
		a.fast.fp.Untrack(tc)
	}
	return &prefixConn{Conn: client, r: io.MultiReader(bytes.NewReader(peeked), client)}, nil
}

// fastUnlisten undoes fastListen (a.mu held).
func (a *Agent) fastUnlisten(ap netip.AddrPort) {
	if a.fast.fp != nil && a.fast.listening[ap] {
		a.fast.fp.RemoveListener(ap)
		delete(a.fast.listening, ap)
	}
}

// fastDone undoes fastPrepare; nil when the pair is not a candidate.
type fastDone func()

// release undoes fastPrepare (nil: nothing to undo).
func (f fastDone) release() {
	if f != nil {
		f()
	}
}

// fastPrepare registers the endpoint ev is about to be dialed at, when the
// pair could take the fast path: a plain TCP relay to an endpoint dialed
// directly. It returns the function that undoes it (nil: not a candidate).
func (a *Agent) fastPrepare(t listenTarget, ev *endpointView, port string) fastDone {
	if a.fast.fp == nil || t.proto != "tcp" || ev.mesh != "" {
		return nil
	}
	addr, err := ev.ep.AddrPort(port)
	if err != nil {
		return nil
	}
	done, err := a.fast.fp.PrepareEndpoint(addr)
	if err != nil {
		a.log.Debug("agent: fast path: endpoint not tracked", "addr", addr, "err", err)
		return nil
	}
	return done
}

// relayTCP relays an authorized client connection and its endpoint
// connection: through the fast path when fastPrepare took the endpoint
// (sent is how many client bytes were already written to up), else
// proxy.RelayIdle. Either way timeouts.idle is enforced from the kernel's
// per-socket idle times (TCP_INFO), which also see the bytes the kernel
// moves past the agent.
func (a *Agent) relayTCP(ctx context.Context, client, up net.Conn, fast fastDone, sent int, idle time.Duration) error {
	tc, ok1 := client.(*net.TCPConn)
	tu, ok2 := up.(*net.TCPConn)
	if fast == nil || !ok1 || !ok2 {
		if a.fast.fp != nil && ok1 {
			a.fast.fp.Untrack(tc) // a local client of a tcp port, relayed here
		}
		_, _, err := proxy.RelayIdle(ctx, client, up, idle)
		return err
	}
	r, err := a.fast.fp.Relay(ctx, tc, tu, int64(sent), idle)
	if r.Kernel {
		// Bytes before the count: a reader that sees the connection
		// counted sees its bytes too (TestFastPathAutoPort waits on the
		// count, then reads the bytes).
		a.fast.kernelUp.Add(int(r.KernelClientToUp))
		a.fast.kernelDown.Add(int(r.KernelUpToClient))
		a.fast.kernelConns.Inc()
		if r.GaveUp {
			a.fast.gaveUp.Inc()
		}
	} else {
		a.fast.agentConns.Inc()
	}
	return err
}
