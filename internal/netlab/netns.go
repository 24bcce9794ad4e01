package netlab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// netnsDir is where `ip netns` keeps the bind mounts that name namespaces.
const netnsDir = "/run/netns"

// Netns is a named network namespace (`ip netns add NAME`). Its methods run
// a program, Go code, or a socket call inside it; the namespace itself is
// made and removed by the Lab that owns it.
type Netns struct {
	Name string
}

var _ Network = (*Netns)(nil)

// Command returns a command that runs name with args inside the namespace
// (`ip netns exec NAME name args...`). ip execs the program, so the
// command's Process is the program itself and killing it needs no more.
func (n *Netns) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Run runs name with args inside the namespace and returns its combined
// output; a failure's error carries the output.
func (n *Netns) Run(name string, args ...string) ([]byte, error) {
	out, err := n.Command(context.Background(), name, args...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("netns %s: %s %s: %w: %s", n.Name, name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return out, nil
}

// ip runs `ip -n NAME -batch -` with the given lines: one exec configures a
// namespace.
func (n *Netns) ip(lines ...string) error {
	cmd := exec.Command("ip", "-n", n.Name, "-batch", "-")
	cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("netns %s: ip batch: %w: %s", n.Name, err, bytes.TrimSpace(out))
	}
	return nil
}

// Do runs fn on an OS thread that has joined the namespace, and returns
// its error. Sockets fn creates (Listen, ListenPacket, Dial) belong to the
// namespace for their whole life, whichever goroutine later reads, writes
// or accepts on them; sockets made by goroutines fn starts do not (they run
// on other threads), so create every socket inside fn. The thread is never
// unlocked: it exits with its goroutine and so never runs other Go code in
// the wrong namespace. A panic in fn is re-raised in the caller.
func (n *Netns) Do(fn func() error) error {
	type result struct {
		err      error
		panicked bool
		val      any
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // no Unlock: see above
		var r result
		defer func() {
			if v := recover(); v != nil {
				r = result{panicked: true, val: v}
			}
			done <- r
		}()
		f, err := os.Open(netnsDir + "/" + n.Name)
		if err != nil {
			r.err = fmt.Errorf("netns %s: %w", n.Name, err)
			return
		}
		err = unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
		f.Close()
		if err != nil {
			r.err = fmt.Errorf("netns %s: setns: %w", n.Name, err)
			return
		}
		r.err = fn()
	}()
	r := <-done
	if r.panicked {
		panic(r.val)
	}
	return r.err
}

// checkLiteral refuses a host name: a name would be resolved by the
// resolver, which may run on another thread, outside the namespace, and
// send a DNS query out of the machine.
func checkLiteral(address string) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return fmt.Errorf("netlab: address %q: %w", address, err)
	}
	if host == "" {
		return nil
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return fmt.Errorf("netlab: address %q: host must be an IP literal", address)
	}
	return nil
}

// Listen opens a listener inside the namespace (see Do). address must be
// an IP literal with a port, or ":port".
func (n *Netns) Listen(network, address string) (net.Listener, error) {
	if err := checkLiteral(address); err != nil {
		return nil, err
	}
	var ln net.Listener
	err := n.Do(func() (err error) {
		ln, err = net.Listen(network, address)
		return err
	})
	return ln, err
}

// ListenPacket opens a packet socket inside the namespace (see Do).
func (n *Netns) ListenPacket(network, address string) (net.PacketConn, error) {
	if err := checkLiteral(address); err != nil {
		return nil, err
	}
	var pc net.PacketConn
	err := n.Do(func() (err error) {
		pc, err = net.ListenPacket(network, address)
		return err
	})
	return pc, err
}

// DialContext connects from inside the namespace; its signature fits
// http.Transport.DialContext. address must be an IP literal with a port.
func (n *Netns) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	if err := checkLiteral(address); err != nil {
		return nil, err
	}
	var c net.Conn
	err := n.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// RuleCounter returns how many packets have matched the iptables rule of
// the given table and chain whose comment is comment (rules made with
// `-m comment --comment C`). Tests use it as proof that a packet was
// dropped, instead of waiting for something not to arrive.
func (n *Netns) RuleCounter(table, chain, comment string) (uint64, error) {
	out, err := n.Run("iptables", "-w", "-t", table, "-L", chain, "-v", "-x", "-n")
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(out)) {
		if !strings.Contains(line, "/* "+comment+" */") {
			continue
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			break
		}
		return strconv.ParseUint(f[0], 10, 64)
	}
	return 0, fmt.Errorf("netns %s: no rule with comment %q in %s/%s", n.Name, comment, table, chain)
}

// addNetns makes the named namespaces with one `ip -batch`.
func addNetns(names []string) error {
	lines := make([]string, len(names))
	for i, name := range names {
		lines[i] = "netns add " + name
	}
	cmd := exec.Command("ip", "-batch", "-")
	cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("netlab: ip netns add: %w: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

// deleteNetns kills the processes left inside the namespace and removes
// it; the veths, bridges, routes and iptables rules inside go with it. A
// namespace that is already gone is not an error.
func deleteNetns(name string) error {
	if _, err := os.Stat(netnsDir + "/" + name); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if out, err := exec.Command("ip", "netns", "pids", name).Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			pid, err := strconv.Atoi(f)
			if err != nil || pid == os.Getpid() {
				continue
			}
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
		if _, serr := os.Stat(netnsDir + "/" + name); errors.Is(serr, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("netlab: ip netns del %s: %w: %s", name, err, bytes.TrimSpace(out))
	}
	return nil
}

// Sweep removes the namespaces a killed run left behind: those named
// PREFIX-PID-... whose process PID no longer runs. A live run's namespaces
// are kept, so a test may call Sweep while other test packages run. It
// returns the names it removed.
func Sweep(prefix string) ([]string, error) {
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("netlab: sweep: %w", err)
	}
	var removed []string
	var errs []error
	for _, e := range entries {
		pid, ok := ownerPID(prefix, e.Name())
		if !ok || alive(pid) {
			continue
		}
		if err := deleteNetns(e.Name()); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, e.Name())
	}
	return removed, errors.Join(errs...)
}

// ownerPID parses PREFIX-PID-rest.
func ownerPID(prefix, name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, prefix+"-")
	if !ok {
		return 0, false
	}
	p, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	pid, err := strconv.Atoi(p)
	return pid, err == nil && pid > 0
}

func alive(pid int) bool {
	if pid == os.Getpid() {
		return true
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
