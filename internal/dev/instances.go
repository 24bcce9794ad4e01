package dev

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Two demos on one machine clash on their state directory (the store is
// locked by the first), their ports, or their virtual IP ranges (the
// second's agents cannot bind, and its printed curl reaches the first).
// Each running demo holds a lock in its state directory and lists itself
// in a registry directory, so a second one can say which instance holds
// what, and which flag avoids it, and exit instead of half running.

// Instance is what a running demo tells others about itself.
type Instance struct {
	PID       int      `json:"pid"`
	StateDir  string   `json:"stateDir"`
	Admin     string   `json:"admin,omitempty"` // control plane admin address
	VIPRanges []string `json:"vipRanges"`
	HelloPort int      `json:"helloPort"`
}

// registryDir lists the running demos of this machine, one file per
// process (PID.json).
func registryDir() string { return filepath.Join(os.TempDir(), "fogmesh-dev-instances") }

// lockFile is the state directory's lock, held while a demo runs.
const lockFile = "dev.lock"

// stateLock is a held state directory lock.
type stateLock struct {
	f   *os.File
	reg string // this demo's registry file, once written
}

// lockState takes dir's lock; when another demo holds it, the error names
// that demo (its PID and control plane, from the lock file) and the flag
// that gives this one a directory of its own.
func lockState(dir string) (*stateLock, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("dev: state directory: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("dev: state directory lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		var held Instance
		b, _ := os.ReadFile(f.Name())
		f.Close()
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("dev: lock %s: %w", f.Name(), err)
		}
		who := "another fogmesh dev"
		if json.Unmarshal(b, &held) == nil && held.PID > 0 {
			who = fmt.Sprintf("another fogmesh dev (pid %d", held.PID)
			if held.Admin != "" {
				who += ", control plane https://" + held.Admin
			}
			who += ")"
		}
		return nil, &ClashError{fmt.Sprintf("the state directory %s is in use by %s: stop that one, or give this one its own with --state-dir DIR (and --base-port and --vip-range or --vip-octet, so that their ports and virtual IPs do not clash either)", dir, who)}
	}
	f.Truncate(0)
	fmt.Fprintf(f, `{"pid":%d}`, os.Getpid())
	return &stateLock{f: f}, nil
}

// publish writes what this demo holds into its lock file and the registry.
func (l *stateLock) publish(in Instance) {
	b, err := json.Marshal(in)
	if err != nil {
		return
	}
	l.f.Truncate(0)
	l.f.WriteAt(b, 0)
	if os.MkdirAll(registryDir(), 0o1777) == nil {
		p := filepath.Join(registryDir(), strconv.Itoa(in.PID)+".json")
		if os.WriteFile(p, b, 0o644) == nil {
			l.reg = p
		}
	}
}

func (l *stateLock) release() {
	if l == nil {
		return
	}
	if l.reg != "" {
		os.Remove(l.reg)
	}
	l.f.Close() // drops the flock
}

// running returns the other demos of this machine that are alive.
func running() []Instance {
	ents, _ := os.ReadDir(registryDir())
	var out []Instance
	for _, e := range ents {
		pid, err := strconv.Atoi(strings.TrimSuffix(e.Name(), ".json"))
		if err != nil || pid == os.Getpid() || !alive(pid) {
			continue
		}
		b, err := os.ReadFile(filepath.Join(registryDir(), e.Name()))
		var in Instance
		if err != nil || json.Unmarshal(b, &in) != nil || in.PID != pid {
			continue
		}
		if !stateHeld(in.StateDir) {
			// A demo that was killed left its file, and its PID now
			// names another process: not a running demo.
			os.Remove(filepath.Join(registryDir(), e.Name()))
			continue
		}
		out = append(out, in)
	}
	return out
}

// stateHeld reports whether a running demo holds the lock of state
// directory dir: a shared lock that cannot be taken at once.
func stateHeld(dir string) bool {
	f, err := os.Open(filepath.Join(dir, lockFile))
	if err != nil {
		return false
	}
	defer f.Close()
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB)
	return errors.Is(err, syscall.EWOULDBLOCK)
}

// alive reports whether process pid exists (EPERM: it does, another user's).
func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// holderOf names the running demo whose VIP ranges contain addr, or "".
func holderOf(addr netip.Addr) string {
	for _, in := range running() {
		for _, r := range in.VIPRanges {
			if p, err := netip.ParsePrefix(r); err == nil && p.Contains(addr) {
				return describeInstance(in)
			}
		}
	}
	return ""
}

// holderOfPort names the running demo whose control plane admin address
// has port, or "" (its other ports follow from the same --base-port).
func holderOfPort(port string) string {
	for _, in := range running() {
		if strings.HasSuffix(in.Admin, ":"+port) {
			return describeInstance(in)
		}
	}
	return ""
}

func describeInstance(in Instance) string {
	return fmt.Sprintf("fogmesh dev pid %d (state %s, control plane https://%s, virtual IPs %s)", in.PID, in.StateDir, in.Admin, strings.Join(in.VIPRanges, " "))
}

// ClashError is a demo that cannot run beside another: its message says
// which instance holds what, and which flag avoids it.
type ClashError struct{ msg string }

func (e *ClashError) Error() string { return "dev: " + e.msg }
