package netlab

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/testenv"
)

// TestHelperLab is the child process of the cleanup tests: it builds a
// lab, starts a process in it, prints what it made and then panics, fails
// or blocks until killed, as NETLAB_HELPER says.
func TestHelperLab(t *testing.T) {
	mode := os.Getenv("NETLAB_HELPER")
	if mode == "" {
		t.Skip("child process of TestLabRemovedWhenTestPanicsOrFails and TestSweepRemovesKilledRun")
	}
	l := NewWith(t, Options{Prefix: os.Getenv("NETLAB_PREFIX")})
	cmd := l.A.Nodes[0].Command(context.Background(), "sleep", "600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("PID %d\n", cmd.Process.Pid)
	for _, n := range l.Namespaces() {
		fmt.Printf("NS %s\n", n)
	}
	fmt.Println("READY")
	switch mode {
	case "panic":
		panic("helper panics")
	case "fail":
		t.Fatal("helper fails")
	case "block":
		time.Sleep(time.Hour)
	}
}

type helperOut struct {
	pid   int
	names []string
}

func (h *helperOut) parse(line string) bool {
	if p, ok := strings.CutPrefix(line, "PID "); ok {
		h.pid, _ = strconv.Atoi(p)
	}
	if n, ok := strings.CutPrefix(line, "NS "); ok {
		h.names = append(h.names, n)
	}
	return line == "READY"
}

func helperCmd(mode, prefix string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperLab$", "-test.count=1")
	cmd.Env = append(os.Environ(), "NETLAB_HELPER="+mode, "NETLAB_PREFIX="+prefix)
	return cmd
}

func netnsExists(name string) bool {
	_, err := os.Stat(netnsDir + "/" + name)
	return err == nil
}

// running reports whether pid is a live process (a zombie is not).
func running(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	return !strings.HasPrefix(rest, "Z")
}

func TestLabRemovedWhenTestPanicsOrFails(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedTool(t, "ip")
	testenv.NeedTool(t, "iptables")
	for _, mode := range []string{"panic", "fail"} {
		t.Run(mode, func(t *testing.T) {
			out, err := helperCmd(mode, fmt.Sprintf("nlt%d%s", os.Getpid(), mode)).CombinedOutput()
			if err == nil {
				t.Fatalf("helper passed; want it to %s:\n%s", mode, out)
			}
			var h helperOut
			ready := false
			for line := range strings.Lines(string(out)) {
				ready = h.parse(strings.TrimSpace(line)) || ready
			}
			if !ready || len(h.names) == 0 || h.pid == 0 {
				t.Fatalf("helper did not build its lab:\n%s", out)
			}
			if !strings.Contains(string(out), "helper "+map[string]string{"panic": "panics", "fail": "fails"}[mode]) {
				t.Errorf("helper output lacks its %s:\n%s", mode, out)
			}
			for _, n := range h.names {
				if netnsExists(n) {
					t.Errorf("namespace %s left after the helper's %s", n, mode)
					deleteNetns(n)
				}
			}
			waitFor(t, "the process started in the lab to end", func() bool { return !running(h.pid) })
		})
	}
}

// killedRun starts a helper that builds a lab with the prefix, kills it
// with SIGKILL (no cleanup runs) once the lab is ready, and returns what
// it made, which is then still there.
func killedRun(t *testing.T, prefix string) helperOut {
	t.Helper()
	cmd := helperCmd("block", prefix)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var h helperOut
	sc := bufio.NewScanner(stdout)
	for sc.Scan() && !h.parse(sc.Text()) {
	}
	t.Cleanup(func() {
		for _, n := range h.names {
			deleteNetns(n)
		}
	})
	cmd.Process.Kill()
	go func() {
		for sc.Scan() {
		}
	}()
	cmd.Wait()
	if len(h.names) == 0 {
		t.Fatal("helper did not build its lab")
	}
	for _, n := range h.names {
		if !netnsExists(n) {
			t.Fatalf("namespace %s gone before Sweep; the kill should have left it", n)
		}
	}
	return h
}

func TestSweepRemovesKilledRun(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedTool(t, "ip")
	testenv.NeedTool(t, "iptables")
	prefix := fmt.Sprintf("nlt%dsweep", os.Getpid())
	h := killedRun(t, prefix)
	// A running lab with the same prefix (Build: New would sweep).
	live, err := Build(Options{Prefix: prefix})
	if live != nil {
		t.Cleanup(func() { live.Close() })
	}
	if err != nil {
		t.Fatal(err)
	}

	removed, err := Sweep(prefix)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(removed)
	want := slices.Sorted(slices.Values(h.names))
	if !slices.Equal(removed, want) {
		t.Errorf("Sweep removed %v; want the killed run's %v", removed, want)
	}
	for _, n := range h.names {
		if netnsExists(n) {
			t.Errorf("namespace %s left after Sweep", n)
		}
	}
	for _, n := range live.Namespaces() {
		if !netnsExists(n) {
			t.Errorf("Sweep removed %s of a live run", n)
		}
	}
	waitFor(t, "the process left in the killed lab to end", func() bool { return !running(h.pid) })
	if removed, err := Sweep(prefix); err != nil || len(removed) != 0 {
		t.Errorf("second Sweep: %v, %v; want nothing to do", removed, err)
	}
}

func TestNewSweepsKilledRun(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedTool(t, "ip")
	testenv.NeedTool(t, "iptables")
	prefix := fmt.Sprintf("nlt%dnew", os.Getpid())
	h := killedRun(t, prefix)
	NewWith(t, Options{Prefix: prefix})
	for _, n := range h.names {
		if netnsExists(n) {
			t.Errorf("namespace %s of a killed run left after New", n)
		}
	}
}
