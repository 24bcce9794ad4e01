package control

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/fogmesh/fogmesh/internal/testenv"
)

// TestDiskFull: a control plane whose state disk fills refuses writes with
// a clear error (507, "no space left"), keeps serving what it has, loses
// nothing it acknowledged, and takes writes again once there is room, also
// after a restart on the same files.
func TestDiskFull(t *testing.T) {
	testenv.NeedRoot(t)
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m", "fogmesh-test", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a small tmpfs for the state dir (%v: %s)", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	state := filepath.Join(dir, "state")
	s := startServer(t, state)
	if code, body := applyDoc(t, s, helloSvc); code != http.StatusOK {
		t.Fatalf("apply before the disk fills: %d %s", code, body)
	}
	filler := filepath.Join(dir, "filler")
	fill(t, filler)

	// Many endpoints in one apply: more new pages than the file has free.
	var doc strings.Builder
	for i := range 2000 {
		fmt.Fprintf(&doc, "---\napiVersion: fogmesh.io/v1alpha1\nkind: Endpoint\nmetadata: {name: big-%d, namespace: demo, labels: {pad: %s}}\nspec: {service: hello, address: 127.0.0.1, ports: [{name: http, port: 8080}]}\n", i, strings.Repeat("p", 60))
	}
	code, body := applyDoc(t, s, doc.String())
	if code != http.StatusInsufficientStorage || !strings.Contains(body, "no space left") {
		t.Fatalf("apply on a full disk: %d %s; want 507 saying no space left", code, body)
	}
	if got := listNames(t, s, "services"); len(got) != 1 || got[0] != "hello" {
		t.Fatalf("services served on a full disk: %v, want [hello]", got)
	}
	if got := listNames(t, s, "endpoints"); len(got) != 0 {
		t.Fatalf("%d endpoints of the refused apply are served", len(got))
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if code, body := applyDoc(t, s, doc.String()); code != http.StatusOK {
		t.Fatalf("apply after room was made: %d %s", code, body)
	}
	s.Close()
	s2 := startServer(t, state)
	if got := listNames(t, s2, "endpoints"); len(got) != 2000 {
		t.Fatalf("after a restart: %d endpoints, want 2000", len(got))
	}
}

// fill writes to path until the file system is full.
func fill(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := bytes.Repeat([]byte{1}, 64<<10)
	for range 1 << 12 { // bounded: 256 MiB, far above the mount's size
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("fill: %v", err)
			}
			return
		}
	}
	t.Fatal("fill: the file system never filled")
}

func listNames(t *testing.T, s *Server, kind string) []string {
	t.Helper()
	resp, err := http.Get("http://" + s.AdminAddr() + "/v1/" + kind)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var lr ListResponse
	if err := json.NewDecoder(resp.Body).Decode(&lr); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, raw := range lr.Items {
		var o struct {
			Metadata struct{ Name string } `json:"metadata"`
		}
		if err := json.Unmarshal(raw, &o); err != nil {
			t.Fatal(err)
		}
		names = append(names, o.Metadata.Name)
	}
	return names
}
