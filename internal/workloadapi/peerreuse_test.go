package workloadapi

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fogmesh/fogmesh/internal/testenv"
)

// TestHelperConnectAndExit is not a test: TestPeerPIDReusedBeforeAccept
// runs the test binary as a client that connects its fd 3 to the socket
// named in WL_HELPER_SOCK and exits at once.
func TestHelperConnectAndExit(t *testing.T) {
	path := os.Getenv("WL_HELPER_SOCK")
	if path == "" {
		t.Skip("helper process only")
	}
	if err := unix.Connect(3, &unix.SockaddrUnix{Name: path}); err != nil {
		os.Exit(2)
	}
	os.Exit(0)
}

// TestPeerPIDReusedBeforeAccept: a client connects and exits before the
// server accepts, and its pid goes to a process running an allowed binary.
// The caller's executable must not be read from that other process.
func TestPeerPIDReusedBeforeAccept(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to steer pid allocation (ns_last_pid)")
	}
	sleepExe, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	path := filepath.Join(t.TempDir(), "workload.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// The client's socket, shared with this process so the connection
	// outlives the client (as a child holding it would).
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	sock := os.NewFile(uintptr(fd), "client")
	defer sock.Close()
	helper := exec.Command(os.Args[0], "-test.run=^TestHelperConnectAndExit$")
	helper.Env = append(os.Environ(), "WL_HELPER_SOCK="+path)
	helper.ExtraFiles = []*os.File{sock}
	if err := helper.Run(); err != nil {
		t.Fatalf("helper: %v", err)
	}
	pid := helper.Process.Pid
	// Hand the dead client's pid to a process running sleepExe.
	var reuser *exec.Cmd
	deadline := time.Now().Add(10 * time.Second)
	for reuser == nil {
		if time.Now().After(deadline) {
			t.Skip("could not reuse the client's pid")
		}
		if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(pid-1)), 0); err != nil {
			t.Skipf("ns_last_pid: %v", err)
		}
		c := exec.Command(sleepExe, "30")
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		if c.Process.Pid == pid {
			reuser = c
			break
		}
		c.Process.Kill()
		c.Wait()
	}
	defer func() { reuser.Process.Kill(); reuser.Wait() }()
	testenv.WaitFor(t, time.Until(deadline), "the reusing process to exec", func() bool {
		exe, _ := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
		return exe != "" && exe != os.Args[0]
	})
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got := peerCred(c)
	if got.PID != int32(pid) {
		t.Fatalf("peer pid %d, want the client's %d", got.PID, pid)
	}
	if got.Exe != "" {
		t.Fatalf("caller's executable read as %q from the process that reused its pid; want unknown (\"\")", got.Exe)
	}
}
