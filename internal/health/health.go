// Package health probes a local workload: a TCP connect, an HTTP GET or a
// gRPC grpc.health.v1.Health/Check, repeated every interval and soon after
// the caller wakes it (after a passive failure). It knows nothing of
// services, endpoints or balancing: each result goes to a callback, and the
// caller decides what it changes.
package health

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"
)

// Spec says how to probe one target.
type Spec struct {
	// Type is "tcp" (connect; also the default for ""), "http" (GET Path;
	// a status below 400 is healthy) or "grpc" (Health/Check over
	// cleartext HTTP/2; SERVING is healthy).
	Type string
	// Addr is the target's host:port.
	Addr string
	// Path is the request path of an http probe.
	Path string
	// GRPCService is the service a grpc probe asks about ("" is the server
	// as a whole).
	GRPCService string
	// Timeout bounds one probe (0: only the context bounds it).
	Timeout time.Duration
}

// A Prober checks one target once. Probe may be called from one goroutine
// at a time; Close releases idle connections and may be called once, after
// the last Probe.
type Prober interface {
	// Probe returns nil when the target is healthy and otherwise why not.
	Probe(ctx context.Context) error
	Close()
}

// NewProber returns the prober of s.Type.
func NewProber(s Spec) (Prober, error) {
	switch s.Type {
	case "", "tcp":
		return tcpProber{s}, nil
	case "http":
		return &httpProber{s: s, client: &http.Client{Timeout: s.Timeout,
			Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}}, nil
	case "grpc":
		return &grpcProber{s: s, client: newGRPCClient(s.Timeout)}, nil
	default:
		return nil, fmt.Errorf("health: check type %q is not one of tcp, http, grpc", s.Type)
	}
}

type tcpProber struct{ s Spec }

func (p tcpProber) Probe(ctx context.Context) error {
	d := net.Dialer{Timeout: p.s.Timeout}
	c, err := d.DialContext(ctx, "tcp", p.s.Addr)
	if err != nil {
		return err
	}
	return c.Close()
}

func (tcpProber) Close() {}

type httpProber struct {
	s      Spec
	client *http.Client
}

func (p *httpProber) Probe(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.s.Addr+p.s.Path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", userAgent)
	resp, err := p.client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode >= 400 {
		return fmt.Errorf("http status %d", resp.StatusCode)
	}
	return nil
}

func (p *httpProber) Close() { p.client.CloseIdleConnections() }

type grpcProber struct {
	s      Spec
	client *http.Client
}

func (p *grpcProber) Probe(ctx context.Context) error {
	return checkGRPC(ctx, p.client, p.s.Addr, p.s.GRPCService)
}

func (p *grpcProber) Close() { p.client.CloseIdleConnections() }

// userAgent is sent by the http and grpc probes, so a workload's logs can
// tell checks from traffic.
const userAgent = "fogmesh-health"

// Checker probes a target at once, then every Interval and WakeDelay after
// each signal on Wake, until its context ends.
type Checker struct {
	Prober Prober
	// Interval is the time between probes (default 2s).
	Interval time.Duration
	// Wake asks for a probe soon (nil: never). Send without blocking on a
	// channel with a buffer of one, so signals coalesce.
	Wake <-chan struct{}
	// WakeDelay is how long after a wake the probe runs, so a transient
	// refusal that caused the wake is not re-checked instantly (default
	// Interval/4).
	WakeDelay time.Duration
	// Report receives every probe's result (nil: healthy), from the
	// goroutine that runs Run. It must not block for long: the next probe
	// waits for it.
	Report func(err error)
}

// Run probes until ctx ends. It does not close the Prober.
func (c *Checker) Run(ctx context.Context) {
	interval := c.Interval
	if interval <= 0 {
		interval = 2 * time.Second
	}
	wakeDelay := c.WakeDelay
	if wakeDelay <= 0 {
		wakeDelay = interval / 4
	}
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-c.Wake:
			select {
			case <-ctx.Done():
				return
			case <-time.After(wakeDelay):
			}
		}
		c.Report(c.Prober.Probe(ctx))
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		t.Reset(interval)
	}
}
