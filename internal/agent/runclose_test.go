package agent

import (
	"context"
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
