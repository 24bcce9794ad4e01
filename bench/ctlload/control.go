package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fogmesh/fogmesh/internal/control"
)

// plane is the control plane under load: a child process (`fogmesh
// control`, so its CPU and memory are its own) or, for the CI test, a
// control.Server in this process.
type plane interface {
	// start runs it on its state dir and returns its admin and sync addresses.
	start(ctx context.Context) (admin, sync string, err error)
	// kill stops it at once (SIGKILL for the process).
	kill() error
	// pid is the process to measure (0 in process).
	pid() int
}

type childPlane struct {
	bin, dir string
	hb       time.Duration
	insecure bool
	extra    []string // more flags (-control-flags)
	memLimit string   // GOMEMLIMIT for the child (-control-memlimit)
	cmd      *exec.Cmd
	done     chan error
	n        int
	curPID   atomic.Int64 // for pid, read by the watchdog while cmd changes
}

func (p *childPlane) pid() int { return int(p.curPID.Load()) }

func (p *childPlane) start(ctx context.Context) (string, string, error) {
	p.n++
	addrFile := filepath.Join(p.dir, fmt.Sprintf("addrs-%d.json", p.n))
	// Every simulated agent dials from 127.0.0.1: the sync port's bound
	// on handshakes from one source is lifted to what the bench opens.
	cfgFile := filepath.Join(p.dir, "control.json")
	if err := os.WriteFile(cfgFile, []byte(benchHandshakeBounds), 0o600); err != nil {
		return "", "", err
	}
	args := []string{"control", "-config", cfgFile, "-state-dir", filepath.Join(p.dir, "state"), "-admin-addr", "127.0.0.1:0",
		"-sync-addr", "127.0.0.1:0", "-addr-file", addrFile, "-heartbeat-interval", p.hb.String()}
	if p.insecure {
		args = append(args, "-insecure")
	}
	args = append(args, p.extra...)
	logf, err := os.Create(filepath.Join(p.dir, fmt.Sprintf("control-%d.log", p.n)))
	if err != nil {
		return "", "", err
	}
	p.cmd = exec.Command(p.bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if p.memLimit != "" {
		p.cmd.Env = append(os.Environ(), "GOMEMLIMIT="+p.memLimit)
	}
	if err := p.cmd.Start(); err != nil {
		logf.Close()
		return "", "", fmt.Errorf("start %s: %w", p.bin, err)
	}
	p.curPID.Store(int64(p.cmd.Process.Pid))
	p.done = make(chan error, 1)
	go func() { p.done <- p.cmd.Wait(); logf.Close() }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		b, err := os.ReadFile(addrFile)
		if err == nil {
			var addrs map[string]string
			if json.Unmarshal(b, &addrs) == nil && addrs["admin"] != "" && addrs["sync"] != "" {
				return addrs["admin"], addrs["sync"], nil
			}
		}
		select {
		case err := <-p.done:
			return "", "", fmt.Errorf("control plane exited: %v (log %s)", err, logf.Name())
		case <-ctx.Done():
			return "", "", ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return "", "", errors.New("control plane wrote no address file within 60s")
		}
	}
}

func (p *childPlane) kill() error {
	if p.cmd == nil {
		return nil
	}
	p.curPID.Store(0)
	p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		return errors.New("control plane did not die")
	}
	p.cmd = nil
	return nil
}

type inProcPlane struct {
	dir      string
	hb       time.Duration
	insecure bool
	s        *control.Server
	cancel   context.CancelFunc
	done     chan error
}

func (p *inProcPlane) pid() int { return 0 }

func (p *inProcPlane) start(ctx context.Context) (string, string, error) {
	s, err := control.New(control.Config{StateDir: filepath.Join(p.dir, "state"), AdminAddr: "127.0.0.1:0",
		SyncAddr: "127.0.0.1:0", HeartbeatInterval: p.hb, Insecure: p.insecure,
		SyncMaxHandshakes: benchMaxHandshakes, SyncMaxHandshakesPerSource: benchMaxHandshakes})
	if err != nil {
		return "", "", err
	}
	sctx, cancel := context.WithCancel(context.Background())
	p.s, p.cancel, p.done = s, cancel, make(chan error, 1)
	go func() { p.done <- s.Serve(sctx) }()
	return s.AdminAddr(), s.SyncAddr(), nil
}

func (p *inProcPlane) kill() error {
	if p.s == nil {
		return nil
	}
	p.cancel()
	p.s.Close()
	<-p.done
	p.s = nil
	return nil
}

// procStat is a process's CPU time and memory, from /proc.
type procStat struct {
	cpu      time.Duration // user + system
	rss, hwm int64         // bytes
	threads  int
	fds      int
	at       time.Time
}

func readProc(pid int) (procStat, error) {
	st := procStat{at: time.Now()}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return st, err
	}
	// Fields after the command name, which is in parentheses.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	if len(f) < 13 {
		return st, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	stt, _ := strconv.ParseInt(f[12], 10, 64)
	st.cpu = time.Duration(ut+stt) * time.Second / 100 // USER_HZ is 100 on Linux
	b, err = os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return st, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		fs := strings.Fields(v)
		if len(fs) == 0 {
			continue
		}
		n, _ := strconv.ParseInt(fs[0], 10, 64)
		switch k {
		case "VmRSS":
			st.rss = n << 10
		case "VmHWM":
			st.hwm = n << 10
		case "Threads":
			st.threads = int(n)
		}
	}
	if ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid)); err == nil {
		st.fds = len(ents)
	}
	return st, nil
}

// admin is a client of the admin API (bearer token and CA bundle from the
// state dir in secure mode).
type admin struct {
	base, token string
	c           *http.Client
}

func newAdmin(addr, stateDir string, insecure bool) (*admin, error) {
	if insecure {
		return &admin{base: "http://" + addr, c: &http.Client{Timeout: 60 * time.Second}}, nil
	}
	tok, err := os.ReadFile(filepath.Join(stateDir, control.AdminTokenFile))
	if err != nil {
		return nil, fmt.Errorf("admin token: %w", err)
	}
	pem, err := os.ReadFile(filepath.Join(stateDir, control.BundleFile))
	if err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New("bundle holds no certificate")
	}
	// As many idle connections as changes in flight (steady keeps up to
	// 32): with fewer, most changes would pay a new TLS handshake, which
	// is the load tool's cost, not the control plane's write path.
	return &admin{base: "https://" + addr, token: strings.TrimSpace(string(tok)), c: &http.Client{Timeout: 60 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}, MaxIdleConnsPerHost: 64}}}, nil
}

func (ad *admin) do(ctx context.Context, method, path string, body []byte, into any) error {
	req, err := http.NewRequestWithContext(ctx, method, ad.base+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	if ad.token != "" {
		req.Header.Set("Authorization", "Bearer "+ad.token)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := ad.c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(b))
	}
	return json.Unmarshal(b, into)
}

// apply posts objects (a JSON array) and returns the store revision.
func (ad *admin) apply(ctx context.Context, objs []any) (uint64, error) {
	body, err := json.Marshal(objs)
	if err != nil {
		return 0, err
	}
	var resp control.ApplyResponse
	if err := ad.do(ctx, http.MethodPost, "/v1/apply", body, &resp); err != nil {
		return 0, err
	}
	return resp.Version, nil
}

// list returns "Kind/name" -> version of one kind (plural), as agents name them.
func (ad *admin) list(ctx context.Context, plural, kind string) (map[string]uint64, uint64, error) {
	var resp control.ListResponse
	if err := ad.do(ctx, http.MethodGet, "/v1/"+plural, nil, &resp); err != nil {
		return nil, 0, err
	}
	out := make(map[string]uint64, len(resp.Items))
	for _, it := range resp.Items {
		var o struct {
			Meta struct {
				Name, Namespace string
				Version         uint64
			} `json:"metadata"`
		}
		if err := json.Unmarshal(it, &o); err != nil {
			return nil, 0, err
		}
		name := o.Meta.Name
		if kind != "Node" {
			name = o.Meta.Namespace + "/" + name
		}
		out[kind+"/"+name] = o.Meta.Version
	}
	return out, resp.Version, nil
}

// benchMaxHandshakes bounds the sync port's handshakes in all and from one
// source in the bench: every agent dials from 127.0.0.1, and the bench
// measures the control plane's sync, not that bound.
const benchMaxHandshakes = 1 << 16

var benchHandshakeBounds = fmt.Sprintf(`{"syncMaxHandshakes": %d, "syncMaxHandshakesPerSource": %d}`, benchMaxHandshakes, benchMaxHandshakes)
