package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// sample is one path's figures in one round.
type sample struct {
	gbps     float64 // bulk flow, Gbit/s
	p50, p99 time.Duration
	relayCPU float64 // relay CPU seconds per Gbit during the bulk flow (relayed only)
	// Cores busy during the bulk flow: this process (both nodes' carriers
	// and the workloads) and the relay process.
	selfCores, relayCores float64
	err                   error
}

type results struct {
	paths     []*path
	samples   map[string][]sample
	punchInfo string
	udpInfo   string
	// udpDropped: datagrams the channel sides' receive queues dropped.
	udpDropped string
	relayPID   int
	holds      []hold
	loadStart  string
	loadEnd    string
	started    time.Time
}

// measure runs the rounds, engines interleaved (the order rotates each
// round), then the relay's memory with held sessions.
func measure(ctx context.Context, b *bench, o options) (*results, error) {
	r := &results{paths: b.paths, samples: map[string][]sample{}, punchInfo: b.punchInfo, udpInfo: b.udpInfo, relayPID: b.relayPID, started: time.Now()}
	// Warm up every path (the first Dial opens the session) and check it
	// carries bytes both ways.
	for _, p := range b.paths {
		if _, err := latency(ctx, p, 10, o.size); err != nil {
			return nil, fmt.Errorf("%s: warm-up: %w", p.name, err)
		}
	}
	for round := 0; round < o.rounds; round++ {
		for i := range b.paths {
			p := b.paths[(i+round)%len(b.paths)]
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			var s sample
			cpu0, cerr := procCPU(b.relayPID)
			self0, _ := procCPU(os.Getpid())
			var bytes int64
			var took time.Duration
			bytes, took, s.err = bulk(ctx, p, o.bulk)
			cpu1, cerr2 := procCPU(b.relayPID)
			self1, _ := procCPU(os.Getpid())
			if s.err == nil {
				s.gbps = float64(bytes) * 8 / took.Seconds() / 1e9
				s.selfCores = (self1 - self0) / took.Seconds()
				s.relayCores = (cpu1 - cpu0) / took.Seconds()
				if relayedPath(p.name) && cerr == nil && cerr2 == nil {
					s.relayCPU = (cpu1 - cpu0) / (float64(bytes) * 8 / 1e9)
				}
				var lat []time.Duration
				lat, s.err = latency(ctx, p, o.n, o.size)
				if s.err == nil {
					s.p50, s.p99 = percentile(lat, 50), percentile(lat, 99)
				}
			}
			if s.err != nil && ctx.Err() != nil {
				return nil, ctx.Err()
			}
			logf("round %d/%d %-11s %6.3f Gbit/s (cores: bench %.2f, relay %.2f)  p50 %v  p99 %v  %v", round+1, o.rounds, p.name, s.gbps, s.selfCores, s.relayCores, s.p50, s.p99, errText(s.err))
			r.samples[p.name] = append(r.samples[p.name], s)
		}
	}
	if b.udpDropped != nil {
		r.udpDropped = b.udpDropped()
	}
	var relayed *path
	for _, p := range b.paths {
		if p.name == "relayed" {
			relayed = p
		}
	}
	if o.hold > 0 && relayed != nil {
		// Streams first: sessions would leave the relay's heap grown.
		r.holds = append(r.holds, holdPhase(ctx, b, fmt.Sprintf("%d idle mesh streams multiplexed in the relayed session (how an agent carries them)", o.hold),
			func(ctx context.Context) ([]net.Conn, int, time.Duration, error) {
				return holdStreams(ctx, relayed, o.hold)
			}))
		r.holds = append(r.holds, holdPhase(ctx, b, fmt.Sprintf("%d idle relayed sessions (a data connection pair each)", o.hold),
			func(ctx context.Context) ([]net.Conn, int, time.Duration, error) { return holdSessions(ctx, b, o.hold) }))
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
	return r, nil
}

// hold is the relay's memory before and while it carries n idle streams
// or sessions.
type hold struct {
	what           string
	n              int
	took           time.Duration
	err            error
	before, during relayMem
}

// relayMem is the relay process's memory: VmRSS from /proc and the Go
// runtime's figures from its /metrics.
type relayMem struct {
	rssKB      int64
	goroutines float64
	heapInuse  float64 // bytes
}

func readRelayMem(ctx context.Context, b *bench) relayMem {
	var m relayMem
	m.rssKB, _ = procRSS(b.relayPID)
	vals, err := relayMetrics(ctx, b, "go_goroutines", "go_memstats_heap_inuse_bytes")
	if err != nil {
		logf("relay metrics: %v", err)
	}
	m.goroutines, m.heapInuse = vals[0], vals[1]
	return m
}

// relayMetrics reads gauges from the relay's admin port (127.0.0.1 inside
// relay 1's namespace).
func relayMetrics(ctx context.Context, b *bench, names ...string) ([]float64, error) {
	out := make([]float64, len(names))
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	hc := &http.Client{Transport: &http.Transport{DialContext: b.lab.Relay1.DialContext}}
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+b.adminAddr+"/metrics", nil)
	if err != nil {
		return out, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return out, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return out, err
	}
	for line := range strings.Lines(string(body)) {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		if i := slices.Index(names, f[0]); i >= 0 {
			out[i], _ = strconv.ParseFloat(f[1], 64)
		}
	}
	return out, nil
}

// holdPhase measures the relay's memory before and while open holds its
// conns, then closes them and waits (bounded) for the relay's goroutines
// to come back down.
func holdPhase(ctx context.Context, b *bench, what string, open func(context.Context) ([]net.Conn, int, time.Duration, error)) hold {
	h := hold{what: what, before: readRelayMem(ctx, b)}
	var conns []net.Conn
	conns, h.n, h.took, h.err = open(ctx)
	h.during = readRelayMem(ctx, b)
	logf("relay holding %s: RSS %d → %d kB, goroutines %.0f → %.0f (%d up in %s, %v)", what, h.before.rssKB, h.during.rssKB,
		h.before.goroutines, h.during.goroutines, h.n, h.took.Round(time.Millisecond), errText(h.err))
	for _, c := range conns {
		c.Close()
	}
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if readRelayMem(ctx, b).goroutines <= h.before.goroutines+4 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	return h
}

// holdStreams opens n mesh streams to the echo workload over p, checks
// each carries a byte both ways and returns them.
func holdStreams(ctx context.Context, p *path, n int) ([]net.Conn, int, time.Duration, error) {
	hctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	start := time.Now()
	conns, err := dialPinged(hctx, n, func(ctx context.Context) (net.Conn, error) { return p.dial(ctx, "echo") })
	if err == nil && len(conns) != n {
		err = fmt.Errorf("%d streams, want %d", len(conns), n)
	}
	return conns, len(conns), time.Since(start), err
}

// dialPinged dials n connections, at most 16 at once, and sends each a
// byte its far end echoes; it returns the connections and the first error
// (which stops the rest).
func dialPinged(ctx context.Context, n int, dial func(context.Context) (net.Conn, error)) ([]net.Conn, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var mu sync.Mutex
	var conns []net.Conn
	var firstErr error
	work := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range work {
				c, err := dial(ctx)
				if err == nil {
					mu.Lock()
					conns = append(conns, c)
					mu.Unlock()
					var x [1]byte
					c.SetDeadline(time.Now().Add(30 * time.Second))
					if _, err = c.Write([]byte{'x'}); err == nil {
						_, err = io.ReadFull(c, x[:])
					}
					c.SetDeadline(time.Time{})
				}
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
						cancel()
					}
					mu.Unlock()
				}
			}
		}()
	}
	for i := 0; i < n && ctx.Err() == nil; i++ {
		select {
		case work <- i:
		case <-ctx.Done():
		}
	}
	close(work)
	wg.Wait()
	return conns, firstErr
}

// relayedPath says whether the relay process forwards path name's bytes
// (its CPU per Gbit/s is measured).
func relayedPath(name string) bool { return name == "relayed" || name == "relayed-udp" }

func errText(err error) string {
	if err == nil {
		return "ok"
	}
	return err.Error()
}

// bulk sends for d on one stream into the sink and returns the bytes the
// sink counted and the time until its count came back.
func bulk(ctx context.Context, p *path, d time.Duration) (int64, time.Duration, error) {
	dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	conn, err := p.dial(dctx, "sink")
	if err != nil {
		return 0, 0, fmt.Errorf("dial: %w", err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	buf := make([]byte, 64<<10)
	start := time.Now()
	end := start.Add(d)
	// A bound, not the flow's end: the loop stops writing at end.
	conn.SetWriteDeadline(end.Add(15 * time.Second))
	var sent int64
	for time.Now().Before(end) {
		n, err := conn.Write(buf)
		sent += int64(n)
		if err != nil {
			return 0, 0, fmt.Errorf("write after %d bytes: %w", sent, err)
		}
	}
	cw, ok := conn.(interface{ CloseWrite() error })
	if !ok {
		return 0, 0, fmt.Errorf("%T has no CloseWrite", conn)
	}
	if err := cw.CloseWrite(); err != nil {
		return 0, 0, fmt.Errorf("close write: %w", err)
	}
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	var cnt [8]byte
	if _, err := io.ReadFull(conn, cnt[:]); err != nil {
		return 0, 0, fmt.Errorf("sink count (sent %d): %w", sent, err)
	}
	took := time.Since(start)
	got := int64(binary.BigEndian.Uint64(cnt[:]))
	if got != sent {
		return 0, 0, fmt.Errorf("sink counted %d bytes, sent %d", got, sent)
	}
	return got, took, nil
}

// latency runs n sequential request/response round trips of size bytes
// on one stream to the echo workload.
func latency(ctx context.Context, p *path, n, size int) ([]time.Duration, error) {
	dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	conn, err := p.dial(dctx, "echo")
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	req := make([]byte, size)
	resp := make([]byte, size)
	out := make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		binary.BigEndian.PutUint32(req, uint32(i))
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		t0 := time.Now()
		if _, err := conn.Write(req); err != nil {
			return nil, fmt.Errorf("round trip %d: %w", i, err)
		}
		if _, err := io.ReadFull(conn, resp); err != nil {
			return nil, fmt.Errorf("round trip %d: %w", i, err)
		}
		out = append(out, time.Since(t0))
		if binary.BigEndian.Uint32(resp) != uint32(i) {
			return nil, fmt.Errorf("round trip %d: echo of another request", i)
		}
	}
	return out, nil
}

func percentile(d []time.Duration, p int) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[min(max(i-1, 0), len(s)-1)]
}

// holdSessions opens n relayed sessions from the hold node (in site A) to
// c1, checks each carries a byte both ways and returns both ends of all
// (the caller closes them). At most 16 sessions are being opened at once:
// c1's relay client queues 64 incoming sessions.
func holdSessions(ctx context.Context, b *bench, n int) ([]net.Conn, int, time.Duration, error) {
	hctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	start := time.Now()
	var mu sync.Mutex
	var conns []net.Conn
	var firstErr error
	// c1's side: echo one byte, then hold.
	accDone := make(chan struct{})
	go func() {
		defer close(accDone)
		for i := 0; i < n; i++ {
			select {
			case c := <-b.holdIn:
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
				go func() {
					var x [1]byte
					c.SetDeadline(time.Now().Add(30 * time.Second))
					if _, err := io.ReadFull(c, x[:]); err == nil {
						c.Write(x[:])
					}
					c.SetDeadline(time.Time{})
				}()
			case <-hctx.Done():
				return
			}
		}
	}()
	dialed, err := dialPinged(hctx, n, func(ctx context.Context) (net.Conn, error) {
		return b.a1hold.rc.DialPeer(ctx, b.c1.id.String())
	})
	if err != nil {
		cancel() // c1's side stops waiting for the rest
	}
	<-accDone
	took := time.Since(start)
	mu.Lock()
	defer mu.Unlock()
	conns = append(conns, dialed...)
	firstErr = err
	if firstErr == nil && hctx.Err() != nil {
		firstErr = hctx.Err()
	}
	if firstErr == nil && len(conns) != 2*n {
		firstErr = fmt.Errorf("%d session ends, want %d", len(conns), 2*n)
	}
	return conns, len(conns) / 2, took, firstErr
}

// clkTck is USER_HZ, the unit of /proc/PID/stat times (100 on Linux's
// supported architectures).
const clkTck = 100

// procCPU returns utime+stime of pid in seconds.
func procCPU(pid int) (float64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	s := string(b)
	// Fields after the command name, which ends with the last ')'.
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	// f[0] is field 3 (state); utime is field 14, stime 15.
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad times", pid)
	}
	return float64(u+st) / clkTck, nil
}

// procRSS returns VmRSS of pid in kB.
func procRSS(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				return strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
}
