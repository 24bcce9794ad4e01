package agent

import (
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/fogmesh/fogmesh/internal/api"
	fmwl "github.com/fogmesh/fogmesh/internal/workloadapi"
)

// TestHelperFetchSVIDAsOtherUser is not a test: TestWorkloadAPIDefaultSocketNonRoot
// runs a copy of the test binary with it, as another uid, to fetch an
// X.509-SVID from the socket named in FOGMESH_WL_FETCH.
func TestHelperFetchSVIDAsOtherUser(t *testing.T) {
	addr := os.Getenv("FOGMESH_WL_FETCH")
	if addr == "" {
		t.Skip("helper process only")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	svid, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("unix://"+addr))
	if err != nil {
		fmt.Println("fetch:", err)
		os.Exit(3)
	}
	fmt.Println("SVID", svid.ID)
	os.Exit(0)
}

// TestWorkloadAPIDefaultSocketNonRoot: an agent run as root with the
// Workload API at its default location hands a workload attested by uid
// 4321 its SVID when a process of that uid asks (not nobody's 65534: that
// is the overflow uid, which no selector may name). With the socket inside
// the 0700 state directory, that process could not even connect (EACCES).
func TestWorkloadAPIDefaultSocketNonRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the agent runs as root and the workload as uid 4321")
	}
	const uid, gid = 4321, 4321
	// A base directory any user may traverse, as /var/lib/fogmesh is
	// (t.TempDir's parent is 0700).
	base, err := os.MkdirTemp("", "fogmesh-wlsock-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	// The test binary, where uid 4321 may run it (go test builds it in a
	// 0700 directory).
	helper := filepath.Join(base, "helper.test")
	copyExecutable(t, helper)

	iss := newFakeIssuer(t, time.Hour)
	u := uid
	a, err := New(Config{
		Node:     NodeConfig{Name: "n1", Site: "s1", Region: "r1"},
		MeshAddr: "127.0.0.1:0", DNSAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", VIPRange: "127.185.0.0/16",
		StateDir: filepath.Join(base, "state"), Upstreams: []string{}, SVIDIssuer: iss, Insecure: true,
		Workloads: []Workload{{Name: "orders-1", Service: "orders", Namespace: "shop", ServiceAccount: "orders-sa",
			Ports: []api.EndpointPort{{Name: "web", Port: 1}}, Check: Check{Type: "none"}, Attest: &Attest{UID: &u}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	sock := a.cfg.WorkloadAPISocket
	t.Logf("default socket: %s", sock)
	a.svids.SetTrust(api.DefaultTrustDomain, map[string][]*x509.Certificate{api.DefaultTrustDomain: {iss.cert}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	if fi, err := os.Stat(a.cfg.StateDir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("state directory: %v, %v; want mode 0700 (it holds private keys)", fi, err)
	}
	waitFor(t, "the workload's SVID", func() bool { return len(a.svids.SVIDs(fmwl.Caller{UID: uid, Known: true})) > 0 })

	cctx, ccancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer ccancel()
	cmd := exec.CommandContext(cctx, helper, "-test.run=^TestHelperFetchSVIDAsOtherUser$")
	cmd.Env = append(os.Environ(), "FOGMESH_WL_FETCH="+sock)
	cmd.Dir = base
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "SVID spiffe://fogmesh.local/ns/shop/sa/orders-sa") {
		t.Fatalf("uid %d fetching from %s: %v\n%s", uid, sock, err, out)
	}
}

// copyExecutable copies the running test binary to dst, mode 0755.
func copyExecutable(t *testing.T, dst string) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(f, src); err != nil {
		f.Close()
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}
