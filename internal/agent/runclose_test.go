package agent

import (
	"context"
	"net"
	"testing"
	"time"
)

// TestRunAfterClose: Run after Close returns nil at once and starts
// nothing (before, it started every server and loop, none of which a later
// Close would wait for, and ran until its context ended).
func TestRunAfterClose(t *testing.T) {
	a, err := New(agentConfig(agentOpts{name: "n", site: "s", region: "r", vipOctet: 83, stateDir: t.TempDir()}))
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	done := make(chan error, 1)
	go func() { done <- a.Run(context.Background()) }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run after Close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run after Close still running")
	}
}

// TestRunRacesClose: Close right as Run starts (a test that stops an agent
// it has just started) ends Run, and Close's wait is ordered after every
// goroutine Run starts (before, Run's WaitGroup Adds could come at zero
// while Close waited: -race reported it, and Run went on serving).
func TestRunRacesClose(t *testing.T) {
	for i := 0; i < 5; i++ {
		a, err := New(agentConfig(agentOpts{name: "n", site: "s", region: "r", vipOctet: 83, stateDir: t.TempDir()}))
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- a.Run(context.Background()) }()
		a.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("Run racing Close still running after Close returned")
		}
	}
}

// TestCloseBeforeRunClosesListeners: Close before Run (and Run after it,
// which starts nothing) leaves no socket of the agent's open: the admin
// port refuses connections, the Workload API socket is gone. Before, only
// the servers' Serve closed the admin, gateway and Workload API listeners
// (http.Server's Shutdown and Close close only the listeners they serve),
// and Run after Close no longer calls Serve: the admin port stayed bound,
// accepting into its backlog with nothing to answer, until the process
// ended.
func TestCloseBeforeRunClosesListeners(t *testing.T) {
	dir := t.TempDir()
	a, err := New(agentConfig(agentOpts{name: "n", site: "s", region: "r", vipOctet: 62, stateDir: dir}))
	if err != nil {
		t.Fatal(err)
	}
	admin := a.AdminAddr()
	sock := DefaultWorkloadAPISocket(dir)
	if c, err := net.Dial("unix", sock); err != nil { // on before Close, so its check below tests something
		t.Fatalf("Workload API socket before Close: %v", err)
	} else {
		c.Close()
	}
	a.Close()
	if err := a.Run(context.Background()); err != nil {
		t.Errorf("Run after Close: %v", err)
	}
	if c, err := net.DialTimeout("tcp", admin, 5*time.Second); err == nil {
		c.Close()
		t.Errorf("the admin port %s still accepts connections after Close", admin)
	}
	if c, err := net.Dial("unix", sock); err == nil {
		c.Close()
		t.Errorf("the Workload API socket %s still accepts connections after Close", sock)
	}
}
