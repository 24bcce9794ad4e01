package localid

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/fogmesh/fogmesh/internal/svid"
	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/workloadapi"
)

// TestHelperUserNSCheck is not a test: TestCheckClientOfUnmappedUID runs
// the test binary with it in a new user namespace that maps neither its
// own uid nor its gid (it keeps the host's root ids, which that namespace
// shows as the overflow ids). It connects to its own loopback listener,
// so both ends are its own, and prints Check's verdict for selectors
// naming the overflow uid, the overflow gid and its own executable.
func TestHelperUserNSCheck(t *testing.T) {
	if os.Getenv("LOCALID_USERNS_HELPER") == "" {
		t.Skip("helper process only")
	}
	fail := func(f string, a ...any) { fmt.Printf("error: "+f+"\n", a...); os.Exit(2) }
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		fail("%v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail("%v", err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		fail("%v", err)
	}
	defer client.Close()
	c, err := ln.Accept()
	if err != nil {
		fail("accept: %v", err)
	}
	defer c.Close()
	remote := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	local := c.LocalAddr().(*net.TCPAddr).AddrPort()
	ov := workloadapi.Overflow()
	uid, gid := int(ov.UID), int(ov.GID)
	for _, s := range []struct {
		name string
		at   *svid.Attest
	}{{"uid", &svid.Attest{UID: &uid}}, {"gid", &svid.Attest{GID: &gid}}, {"path", &svid.Attest{Path: exe}}} {
		r := Check([]*svid.Attest{s.at}, remote, local)
		fmt.Printf("verdict: %s %d %v socket_uid=%d holders=%+v err=%v\n", s.name, r.Verdict, r.Unmapped, r.Owner.UID, r.Owner.Procs, r.Err)
	}
}

// TestCheckClientOfUnmappedUID: an agent sees a local client whose uid and
// gid its user namespace does not map as the overflow ids (65534). Such a
// client is unknown to uid and gid selectors, even ones naming the
// overflow ids, which would otherwise grant it the identity of the host's
// nobody; a path selector, which does not depend on them, still matches.
func TestCheckClientOfUnmappedUID(t *testing.T) {
	testenv.NeedRoot(t)
	helper := exec.Command(os.Args[0], "-test.run=^TestHelperUserNSCheck$", "-test.timeout=30s")
	helper.Env = append(os.Environ(), "LOCALID_USERNS_HELPER=1")
	// The namespace maps one id the test process (root) does not have.
	helper.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWUSER, Pdeathsig: syscall.SIGKILL,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 4242, Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 4242, Size: 1}}}
	out, err := helper.CombinedOutput()
	if _, exited := err.(*exec.ExitError); err != nil && !exited {
		t.Skipf("cannot start a helper in a new user namespace: %v", err)
	}
	got := map[string]Verdict{}
	for line := range strings.Lines(string(out)) {
		var name string
		var v Verdict
		var unmapped bool
		if _, err := fmt.Sscanf(line, "verdict: %s %d %t", &name, &v, &unmapped); err == nil {
			t.Log(strings.TrimSpace(line))
			got[name] = v
			if !unmapped {
				t.Errorf("%s selector: Result.Unmapped false; the socket's ids are the overflow ids", name)
			}
		}
	}
	if len(got) != 3 {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	for name, want := range map[string]Verdict{"uid": Mismatch, "gid": Mismatch, "path": Attested} {
		if got[name] != want {
			t.Errorf("%s selector: verdict %d, want %d (0 attested, 1 mismatch, 2 unknown owner)", name, got[name], want)
		}
	}
}
