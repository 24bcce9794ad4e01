package dev

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// TestRunningSkipsStaleEntries: a registry entry whose PID names a live
// process but whose state directory no demo holds (a demo killed without
// cleaning up, its PID reused) is not a running demo, and its file goes;
// one whose state directory is locked is.
func TestRunningSkipsStaleEntries(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	pid := os.Getppid() // alive, and not this process (running skips that)
	write := func(in Instance) {
		t.Helper()
		if err := os.MkdirAll(registryDir(), 0o700); err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(in)
		if err := os.WriteFile(filepath.Join(registryDir(), strconv.Itoa(in.PID)+".json"), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	stale := Instance{PID: pid, StateDir: t.TempDir(), VIPRanges: []string{"127.28.0.0/16"}}
	if _, err := os.Create(filepath.Join(stale.StateDir, lockFile)); err != nil { // left unlocked
		t.Fatal(err)
	}
	write(stale)
	if got := running(); len(got) != 0 {
		t.Fatalf("running() = %+v with only a stale entry", got)
	}
	if _, err := os.Stat(filepath.Join(registryDir(), strconv.Itoa(pid)+".json")); !os.IsNotExist(err) {
		t.Fatalf("the stale entry's file is still there: %v", err)
	}

	live := Instance{PID: pid, StateDir: t.TempDir(), VIPRanges: []string{"127.28.0.0/16"}}
	l, err := lockState(live.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	defer l.release()
	write(live)
	if got := running(); len(got) != 1 || got[0].StateDir != live.StateDir {
		t.Fatalf("running() = %+v, want the demo holding %s", got, live.StateDir)
	}
}
