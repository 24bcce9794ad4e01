package localid

import (
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/sockowner"
	"github.com/fogmesh/fogmesh/internal/svid"
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
