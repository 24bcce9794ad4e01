package workloadapi_test

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/svid"
	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/workloadapi"
)

// TestHelperUserNSServer is not a test: TestCallerOfUnmappedUID runs the
// test binary with it in a new user namespace that maps none of the test
// process's ids. It accepts one connection on WL_USERNS_SOCK and prints
// its Caller.
func TestHelperUserNSServer(t *testing.T) {
	sock := os.Getenv("WL_USERNS_SOCK")
	if sock == "" {
		t.Skip("helper process only")
	}
	fail := func(f string, a ...any) { fmt.Printf("error: "+f+"\n", a...); os.Exit(2) }
	ln, err := net.Listen("unix", sock)
	if err != nil {
		fail("%v", err)
	}
	defer ln.Close()
	ln.(*net.UnixListener).SetDeadline(time.Now().Add(20 * time.Second))
	c, err := ln.Accept()
	if err != nil {
		fail("accept: %v", err)
	}
	defer c.Close()
	b, _ := json.Marshal(workloadapi.PeerCredForTest(c))
	fmt.Printf("caller: %s\n", b)
}

// TestCallerOfUnmappedUID: the Workload API of an agent in a user namespace
// that does not map a caller's uid and gid gets the overflow ids for them
// from SO_PEERCRED (65534, /proc/sys/kernel/overflowuid). Selectors naming
// those ids must not match it: they would hand every such caller, whoever
// it is, the SVID meant for the host's nobody.
func TestCallerOfUnmappedUID(t *testing.T) {
	testenv.NeedRoot(t)
	sock := filepath.Join(t.TempDir(), "wl.sock")
	helper := exec.Command(os.Args[0], "-test.run=^TestHelperUserNSServer$", "-test.timeout=30s")
	helper.Env = append(os.Environ(), "WL_USERNS_SOCK="+sock)
	var out testenv.Buffer
	helper.Stdout, helper.Stderr = &out, &out
	// The namespace maps one id the test process (root) does not have.
	helper.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWUSER, Pdeathsig: syscall.SIGKILL,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 4242, Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 4242, Size: 1}}}
	if err := helper.Start(); err != nil {
		t.Skipf("cannot start a helper in a new user namespace: %v", err)
	}
	waited := false
	defer func() {
		if !waited {
			helper.Process.Kill()
			helper.Wait()
		}
	}()
	var c net.Conn
	testenv.WaitFor(t, 10*time.Second, "the helper's socket", func() bool {
		var err error
		c, err = net.Dial("unix", sock)
		return err == nil
	})
	defer c.Close()
	err := helper.Wait()
	waited = true
	var got workloadapi.Caller
	found := false
	for line := range strings.Lines(out.String()) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "caller: "); ok {
			found = json.Unmarshal([]byte(v), &got) == nil
		}
	}
	if !found {
		t.Fatalf("helper: %v\n%s", err, out.String())
	}
	ov := workloadapi.Overflow()
	t.Logf("caller as the agent in the user namespace saw it: %+v (overflow ids %+v)", got, ov)
	if !got.Known || uint32(got.UID) != ov.UID || uint32(got.GID) != ov.GID {
		t.Fatalf("caller %+v; want known, with the overflow uid and gid %+v", got, ov)
	}
	uid, gid := int(ov.UID), int(ov.GID)
	for name, at := range map[string]*svid.Attest{"uid": {UID: &uid}, "gid": {GID: &gid}, "uid and gid": {UID: &uid, GID: &gid}} {
		if at.Matches(got) {
			t.Errorf("%s selector naming the overflow ids matches a caller whose ids the kernel could not map", name)
		}
	}
}
