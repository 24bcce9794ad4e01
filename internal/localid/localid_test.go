package localid

import (
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/sockowner"
	"github.com/fogmesh/fogmesh/internal/svid"
	"github.com/fogmesh/fogmesh/internal/workloadapi"
)

func intp(v int) *int { return &v }

// TestCheck: this test process connects to its own loopback listener;
// selectors naming its uid and executable attest it, one naming another
// uid refutes it on the socket's creator alone (no holders scanned), one
// naming another executable refutes it after the scan, and a socket that
// no longer exists has an unknown owner.
func TestCheck(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("sockowner reads sock_diag and /proc: Linux only")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
		close(accepted)
	}()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	var server net.Conn
	select {
	case server = <-accepted:
	case <-time.After(10 * time.Second):
		t.Fatal("accept timed out")
	}
	if server == nil {
		t.Fatal("accept failed")
	}
	defer server.Close()
	remote := server.RemoteAddr().(*net.TCPAddr).AddrPort()
	local := server.LocalAddr().(*net.TCPAddr).AddrPort()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	uid := os.Getuid()
	for _, c := range []struct {
		name      string
		ats       []*svid.Attest
		want      Verdict
		wantProcs bool
	}{
		{"own uid", []*svid.Attest{{UID: intp(uid)}}, Attested, true},
		{"own uid and executable", []*svid.Attest{{UID: intp(uid), Path: exe}}, Attested, true},
		{"another uid", []*svid.Attest{{UID: intp(uid + 4242)}}, Mismatch, false},
		{"another executable", []*svid.Attest{{Path: "/usr/bin/not-this-test"}}, Mismatch, true},
		{"second selector matches", []*svid.Attest{{UID: intp(uid + 4242)}, {Path: exe}}, Attested, true},
	} {
		r := Check(c.ats, remote, local)
		if r.Verdict != c.want || (len(r.Owner.Procs) > 0) != c.wantProcs {
			t.Errorf("%s: verdict %d with %d holders (err %v), want %d (holders scanned: %v)",
				c.name, r.Verdict, len(r.Owner.Procs), r.Err, c.want, c.wantProcs)
		}
		if r.Unmapped {
			t.Errorf("%s: Result.Unmapped for this process's own socket (uid %d)", c.name, uid)
		}
		if r.Verdict == Attested && r.Owner.Procs[0].PID != int32(os.Getpid()) {
			t.Errorf("%s: holder pid %d, want this process %d", c.name, r.Owner.Procs[0].PID, os.Getpid())
		}
	}
	client.Close()
	server.Close()
	// The connection is gone: nothing owns that socket pair any more.
	if r := Check([]*svid.Attest{{UID: intp(uid)}}, remote, local); r.Verdict != UnknownOwner {
		t.Errorf("closed socket: verdict %d, err %v; want an unknown owner", r.Verdict, r.Err)
	}
}

// TestOwnerMatches: every process holding the socket must pass one
// selector, a uid selector also holds for the socket's creator, and an
// owner with no known process never passes.
func TestOwnerMatches(t *testing.T) {
	app := sockowner.Process{PID: 10, UID: 1000, GID: 1000, Exe: "/usr/bin/app"}
	other := sockowner.Process{PID: 11, UID: 1000, GID: 1000, Exe: "/usr/bin/python3"}
	byPath := []*svid.Attest{{Path: "/usr/bin/app"}}
	byUID := []*svid.Attest{{UID: intp(1000)}}
	cases := []struct {
		name string
		ats  []*svid.Attest
		o    sockowner.Owner
		want bool
	}{
		{"one holder matches", byPath, sockowner.Owner{UID: 1000, Procs: []sockowner.Process{app}}, true},
		{"a second holder does not", byPath, sockowner.Owner{UID: 1000, Procs: []sockowner.Process{app, other}}, false},
		{"same uid holders", byUID, sockowner.Owner{UID: 1000, Procs: []sockowner.Process{app, other}}, true},
		{"socket made by another uid", byUID, sockowner.Owner{UID: 0, Procs: []sockowner.Process{app}}, false},
		{"no known holder", byUID, sockowner.Owner{UID: 1000}, false},
		{"empty selector", []*svid.Attest{{}}, sockowner.Owner{UID: 1000, Procs: []sockowner.Process{app}}, false},
		{"second selector", []*svid.Attest{{UID: intp(5)}, {Path: "/usr/bin/python3"}}, sockowner.Owner{UID: 1000, Procs: []sockowner.Process{other}}, true},
	}
	for _, c := range cases {
		if got := ownerMatches(c.ats, c.o); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

// TestUnmappedIDsMatchNoIDSelector: a uid or gid the kernel reports as the
// overflow id (the agent's user namespace does not map it) matches no uid
// or gid selector, even one naming that id, whether it is the socket
// creator's or a holder's; the socket is refused on its creator alone
// when only uid selectors could pass. A path selector still matches.
func TestUnmappedIDsMatchNoIDSelector(t *testing.T) {
	ov := workloadapi.Overflow()
	ou, og := int(ov.UID), int(ov.GID)
	unmapped := sockowner.Process{PID: 10, UID: int32(ov.UID), GID: int32(ov.GID), Exe: "/usr/bin/app"}
	halfMapped := sockowner.Process{PID: 11, UID: 1000, GID: int32(ov.GID), Exe: "/usr/bin/app"}
	cases := []struct {
		name string
		ats  []*svid.Attest
		o    sockowner.Owner
		want bool
	}{
		{"overflow uid", []*svid.Attest{{UID: &ou}}, sockowner.Owner{UID: ov.UID, Procs: []sockowner.Process{unmapped}}, false},
		{"overflow gid", []*svid.Attest{{GID: &og}}, sockowner.Owner{UID: ov.UID, Procs: []sockowner.Process{unmapped}}, false},
		{"overflow gid, mapped uid", []*svid.Attest{{UID: intp(1000), GID: &og}}, sockowner.Owner{UID: 1000, Procs: []sockowner.Process{halfMapped}}, false},
		{"mapped uid of a half-mapped holder", []*svid.Attest{{UID: intp(1000)}}, sockowner.Owner{UID: 1000, Procs: []sockowner.Process{halfMapped}}, true},
		{"path alone", []*svid.Attest{{Path: "/usr/bin/app"}}, sockowner.Owner{UID: ov.UID, Procs: []sockowner.Process{unmapped}}, true},
	}
	for _, c := range cases {
		if got := ownerMatches(c.ats, c.o); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
	if uidPossible([]*svid.Attest{{UID: &ou}}, ov.UID) {
		t.Error("a socket made by the overflow uid can pass a uid selector naming it: it would be scanned, not refused at once")
	}
	if !uidPossible([]*svid.Attest{{UID: &ou}, {Path: "/usr/bin/app"}}, ov.UID) {
		t.Error("a socket made by the overflow uid is refused before a path selector is tried")
	}
}
