package sockowner

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// connPair returns an accepted connection of ln and the client end that
// dial made.
func connPair(t *testing.T, ln net.Listener, dial func() (net.Conn, error)) (server, client net.Conn) {
	t.Helper()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() { c, err := ln.Accept(); ch <- res{c, err} }()
	client, err := dial()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatal(r.err)
		}
		t.Cleanup(func() { r.c.Close() })
		return r.c, client
	case <-time.After(5 * time.Second):
		t.Fatal("accept timed out")
	}
	return nil, nil
}

func addrs(c net.Conn) (remote, local netip.AddrPort) {
	return c.RemoteAddr().(*net.TCPAddr).AddrPort(), c.LocalAddr().(*net.TCPAddr).AddrPort()
}

func listen(t *testing.T, network, addr string) net.Listener {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Skipf("cannot listen on %s: %v", addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// wantSelf checks that o names this test process as the only holder.
func wantSelf(t *testing.T, o Owner) {
	t.Helper()
	exe, _ := os.Executable()
	if o.UID != uint32(os.Geteuid()) || o.Inode == 0 {
		t.Errorf("socket uid %d inode %d, want uid %d and an inode", o.UID, o.Inode, os.Geteuid())
	}
	if len(o.Procs) != 1 {
		t.Fatalf("holders %+v, want this process only", o.Procs)
	}
	p := o.Procs[0]
	if p.PID != int32(os.Getpid()) || p.UID != int32(os.Geteuid()) || p.GID != int32(os.Getegid()) || p.Exe != exe {
		t.Errorf("holder %+v, want pid %d uid %d gid %d exe %s", p, os.Getpid(), os.Geteuid(), os.Getegid(), exe)
	}
}

// TestLookupLoopback: the client end of a real loopback connection is
// found by its 4-tuple and attributed to this process, from a source
// address the client bound (as a workload at 127.0.0.50 does).
func TestLookupLoopback(t *testing.T) {
	ln := listen(t, "tcp", "127.0.0.1:0")
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 50)}}
	srv, _ := connPair(t, ln, func() (net.Conn, error) { return d.Dial("tcp", ln.Addr().String()) })
	remote, local := addrs(srv)
	o, err := Lookup(remote, local)
	if err != nil {
		t.Fatal(err)
	}
	wantSelf(t, o)
	// The accepted end is another socket (another inode).
	if o2, err := Lookup(local, remote); err != nil || o2.Inode == o.Inode {
		t.Errorf("server end: %+v, %v; want a different socket", o2, err)
	}
}

func TestLookupIPv6(t *testing.T) {
	ln := listen(t, "tcp6", "[::1]:0")
	srv, _ := connPair(t, ln, func() (net.Conn, error) { return net.Dial("tcp6", ln.Addr().String()) })
	o, err := Lookup(addrs(srv))
	if err != nil {
		t.Fatal(err)
	}
	wantSelf(t, o)
}

// TestLookupDualStackClient: an AF_INET6 client socket connected to an
// IPv4 address (v4-mapped) is found from the IPv4 addresses the server
// sees.
func TestLookupDualStackClient(t *testing.T) {
	ln := listen(t, "tcp4", "127.0.0.1:0")
	port := ln.Addr().(*net.TCPAddr).Port
	srv, _ := connPair(t, ln, func() (net.Conn, error) {
		fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, err
		}
		if err := unix.Connect(fd, &unix.SockaddrInet6{Port: port, Addr: netip.MustParseAddr("::ffff:127.0.0.1").As16()}); err != nil {
			unix.Close(fd)
			return nil, err
		}
		f := os.NewFile(uintptr(fd), "dual-stack client")
		defer f.Close()
		return net.FileConn(f)
	})
	o, err := Lookup(addrs(srv))
	if err != nil {
		t.Fatal(err)
	}
	wantSelf(t, o)
}

func TestLookupNotFound(t *testing.T) {
	ln := listen(t, "tcp", "127.0.0.1:0")
	_, err := Lookup(netip.MustParseAddrPort("127.0.0.1:1"), ln.Addr().(*net.TCPAddr).AddrPort())
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
}

// TestLookupEveryHolder: a socket inherited by a child is held by both
// processes, and Lookup names both, each with its own credentials (the
// child runs as nobody when the test is root). A caller that trusts the
// connection only when every holder passes cannot be fooled by a process
// that execs an allowed binary and keeps a copy of the socket.
func TestLookupEveryHolder(t *testing.T) {
	ln := listen(t, "tcp", "127.0.0.1:0")
	srv, cli := connPair(t, ln, func() (net.Conn, error) { return net.Dial("tcp", ln.Addr().String()) })
	f, err := cli.(*net.TCPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary:", err)
	}
	cmd := exec.Command(sleep, "60") // killed below; the test does not wait on it
	cmd.ExtraFiles = []*os.File{f}
	wantUID := int32(os.Geteuid())
	if os.Geteuid() == 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		wantUID = 65534
	}
	if err := cmd.Start(); err != nil { // returns after the exec: the child holds the socket
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	o, err := Lookup(addrs(srv))
	if err != nil {
		t.Fatal(err)
	}
	var self, child bool
	for _, p := range o.Procs {
		switch p.PID {
		case int32(os.Getpid()):
			self = true
		case int32(cmd.Process.Pid):
			child = p.UID == wantUID && p.Exe != "" && p.Exe != mustExe(t)
			if !child {
				t.Errorf("child holder %+v, want uid %d and its own exe", p, wantUID)
			}
		}
	}
	if !self || !child || len(o.Procs) != 2 {
		t.Fatalf("holders %+v, want this process and the child %d", o.Procs, cmd.Process.Pid)
	}
	if o.UID != uint32(os.Geteuid()) {
		t.Errorf("socket uid %d, want its creator's %d", o.UID, os.Geteuid())
	}
}

func mustExe(t *testing.T) string {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return exe
}

// BenchmarkLookup is the cost the agent pays per accepted connection from
// an attested workload's address: one sock_diag round trip and one /proc
// scan (proportional to the processes and descriptors on the host).
func BenchmarkLookup(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	cli, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer cli.Close()
	srv, err := ln.Accept()
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	remote, local := srv.RemoteAddr().(*net.TCPAddr).AddrPort(), srv.LocalAddr().(*net.TCPAddr).AddrPort()
	b.Run("sock_diag", func(b *testing.B) {
		for b.Loop() {
			if _, _, err := socketOf(remote, local); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("full", func(b *testing.B) {
		for b.Loop() {
			if _, err := Lookup(remote, local); err != nil {
				b.Fatal(err)
			}
		}
	})
}
