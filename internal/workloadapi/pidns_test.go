package workloadapi

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestCallerExeFailsClosedForInvisibleCallers checks callerExe against a
// fakeProc, a directory laid out as /proc (fake: it is made by the test)
// for the cases a test cannot always make for real: a caller with pid 0
// (outside the agent's pid namespace), a /proc of another pid namespace
// than the agent's, and a pidfd that /proc numbers differently. Each must
// give no executable, so a path selector fails; the plain case reads it.
func TestCallerExeFailsClosedForInvisibleCallers(t *testing.T) {
	const self, caller = 100, 7
	fakeProc := func(selfLink string, fdinfoPid string) string {
		root := t.TempDir()
		for _, pid := range []string{"0", strconv.Itoa(caller)} {
			os.MkdirAll(filepath.Join(root, pid), 0o755)
			if err := os.Symlink("/usr/bin/orders", filepath.Join(root, pid, "exe")); err != nil {
				t.Fatal(err)
			}
		}
		os.MkdirAll(filepath.Join(root, selfLink, "fdinfo"), 0o755)
		os.WriteFile(filepath.Join(root, selfLink, "fdinfo", "5"), []byte("pos:\t0\nflags:\t02000002\nPid:\t"+fdinfoPid+"\nNSpid:\t"+fdinfoPid+"\n"), 0o644)
		if err := os.Symlink(selfLink, filepath.Join(root, "self")); err != nil {
			t.Fatal(err)
		}
		return root
	}
	ours := fakeProc(strconv.Itoa(self), strconv.Itoa(caller))
	for _, c := range []struct {
		name  string
		root  string
		pid   int32
		pidfd int
		want  string
	}{
		{"visible caller", ours, caller, -1, "/usr/bin/orders"},
		{"visible caller, pidfd agrees", ours, caller, 5, "/usr/bin/orders"},
		{"pid 0: outside the agent's pid namespace", ours, 0, -1, ""},
		{"/proc of another pid namespace", fakeProc("4242", strconv.Itoa(caller)), caller, -1, ""},
		{"pidfd numbered otherwise by /proc", fakeProc(strconv.Itoa(self), "9"), caller, 5, ""},
		{"pidfd's process not in this /proc", fakeProc(strconv.Itoa(self), "0"), caller, 5, ""},
	} {
		if got := callerExe(c.root, self, c.pid, c.pidfd); got != c.want {
			t.Errorf("%s: exe %q, want %q", c.name, got, c.want)
		}
	}
	// The real /proc and a real pidfd of this process: its own executable.
	want, _ := os.Readlink("/proc/self/exe")
	pidfd, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		pidfd = -1
	} else {
		defer unix.Close(pidfd)
	}
	if got := callerExe("/proc", os.Getpid(), int32(os.Getpid()), pidfd); got != want {
		t.Errorf("this process through /proc (pidfd %d): exe %q, want %q", pidfd, got, want)
	}
}

// TestHelperPIDNSServer is not a test: TestCallerInOtherPIDNamespace runs
// the test binary with it as pid 1 of a new pid namespace that still sees
// the host's /proc. It makes its client (TestHelperConnectAndHold) take
// pid WL_NS_PID in that namespace, accepts it and prints its Caller.
func TestHelperPIDNSServer(t *testing.T) {
	sock := os.Getenv("WL_NS_SOCK")
	if sock == "" {
		t.Skip("helper process only")
	}
	fail := func(f string, a ...any) { fmt.Printf("error: "+f+"\n", a...); os.Exit(2) }
	want, _ := strconv.Atoi(os.Getenv("WL_NS_PID"))
	ln, err := Listen(sock)
	if err != nil {
		fail("%v", err)
	}
	defer ln.Close()
	// A few tries: the first exec of a Go process may fork once more
	// before the child (the runtime's check for CLONE_PIDFD).
	var client *exec.Cmd
	for try := 0; client == nil; try++ {
		c := exec.Command(os.Args[0], "-test.run=^TestHelperConnectAndHold$")
		c.Env = append(os.Environ(), "WL_HOLD_SOCK="+sock)
		stdin, _ := c.StdinPipe()
		if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(want-1)), 0); err != nil {
			fail("ns_last_pid: %v", err)
		}
		if err := c.Start(); err != nil {
			fail("%v", err)
		}
		if c.Process.Pid == want {
			client = c
			defer func() { stdin.Close(); c.Process.Kill(); c.Wait() }()
			break
		}
		stdin.Close()
		c.Process.Kill()
		c.Wait()
		if try == 5 {
			fmt.Printf("skip: client got pid %d, not %d\n", c.Process.Pid, want)
			return
		}
	}
	// A client that did not get the pid connects all the same: accept
	// until the one that did.
	ln.(*net.UnixListener).SetDeadline(time.Now().Add(10 * time.Second))
	for {
		c, err := ln.Accept()
		if err != nil {
			fail("accept: %v", err)
		}
		got := peerCred(c)
		c.Close()
		if got.PID == int32(want) {
			b, _ := json.Marshal(got)
			fmt.Printf("caller: %s\n", b)
			return
		}
	}
}

// TestHelperConnectAndHold is not a test: a client that connects to
// WL_HOLD_SOCK and holds the connection until its stdin closes.
func TestHelperConnectAndHold(t *testing.T) {
	sock := os.Getenv("WL_HOLD_SOCK")
	if sock == "" {
		t.Skip("helper process only")
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		os.Exit(2)
	}
	defer c.Close()
	bufio.NewReader(os.Stdin).ReadByte()
	os.Exit(0)
}

// TestCallerInOtherPIDNamespace: an agent in its own pid namespace that
// sees the host's /proc (no /proc of its own mounted) accepts a caller
// whose pid in the agent's namespace is the host pid of another process
// (a decoy running sleep). The caller's executable must not be read from
// that decoy: a path selector naming sleep would otherwise hand sleep's
// SVIDs to the test binary. Its uid, from SO_PEERCRED, still counts.
func TestCallerInOtherPIDNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to make a pid namespace and steer pids (ns_last_pid)")
	}
	sleepExe, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	decoy := exec.Command(sleepExe, "60")
	if err := decoy.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { decoy.Process.Kill(); decoy.Wait() }()
	decoyExe, err := os.Readlink("/proc/" + strconv.Itoa(decoy.Process.Pid) + "/exe")
	if err != nil {
		t.Fatal(err)
	}
	helper := exec.Command(os.Args[0], "-test.run=^TestHelperPIDNSServer$", "-test.timeout=30s")
	helper.Env = append(os.Environ(), "WL_NS_SOCK="+filepath.Join(t.TempDir(), "wl.sock"),
		"WL_NS_PID="+strconv.Itoa(decoy.Process.Pid))
	helper.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID, Pdeathsig: syscall.SIGKILL}
	out, err := helper.CombinedOutput()
	if _, exited := err.(*exec.ExitError); err != nil && !exited {
		t.Skipf("cannot start a helper in a new pid namespace: %v", err)
	}
	var got Caller
	found := false
	for line := range strings.Lines(string(out)) {
		line = strings.TrimSpace(line)
		if v, ok := strings.CutPrefix(line, "skip: "); ok {
			t.Skip(v)
		}
		if v, ok := strings.CutPrefix(line, "caller: "); ok {
			if err := json.Unmarshal([]byte(v), &got); err != nil {
				t.Fatal(err)
			}
			found = true
		}
	}
	if !found {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	t.Logf("caller as the agent in the pid namespace saw it: %+v (decoy %d runs %s)", got, decoy.Process.Pid, decoyExe)
	if got.PID != int32(decoy.Process.Pid) {
		t.Fatalf("caller pid %d, want %d (its pid in the helper's namespace)", got.PID, decoy.Process.Pid)
	}
	if got.Exe != "" {
		t.Errorf("caller's executable %q read through a /proc of another pid namespace (the decoy runs %s); want unknown (\"\")", got.Exe, decoyExe)
	}
	if !got.Known || got.UID != 0 || got.GID != 0 {
		t.Errorf("caller credentials %+v; want known, uid 0 and gid 0 (SO_PEERCRED)", got)
	}
}
