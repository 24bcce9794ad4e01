// Package testenv holds what tests share about the machine they run on:
// which outside tools they need. It is imported only by _test.go files
// and test-support packages (netlab).
//
// A test that needs a tool that `make test` installs (curl, dig, mosquitto)
// or root skips, with the reason, on a developer's machine that lacks it,
// but fails in CI (CI=true): there the tool must be present, and a skipped
// test would hide a broken install step.
package testenv

import (
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// InCI reports whether the tests run in CI (the environment variable CI is
// set to a true value, as CI runners and .ci/run set it).
func InCI() bool {
	switch os.Getenv("CI") {
	case "", "0", "false", "no":
		return false
	}
	return true
}

// NeedTool returns the path of the named program, or skips the test (fails
// it in CI) when it is not installed.
func NeedTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		missing(t, name+" not installed (make test installs it)")
	}
	return p
}

// NeedRoot skips the test (fails it in CI) unless it runs as root.
func NeedRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		missing(t, "needs root (network namespaces, iptables); CI runs as root")
	}
}

func missing(t testing.TB, why string) {
	t.Helper()
	if InCI() {
		t.Fatalf("%s; CI must have it", why)
	}
	t.Skip(why)
}

// Buffer collects output written by several goroutines (a process's stdout
// and stderr, a logger's handler) and reads it back safely.
type Buffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *Buffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *Buffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// WaitFor polls cond every 10 ms until it holds, and fails the test naming
// what it waited for when it does not within timeout: the one wait on a
// condition the tests use instead of a fixed sleep.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
}

// AcceptOne listens on a loopback port, serves the first connection it
// accepts with handle (closing it after), and returns the address. The
// listener is closed when the test ends.
func AcceptOne(t testing.TB, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		handle(c)
	}()
	return ln.Addr().String()
}
