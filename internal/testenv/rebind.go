package testenv

import (
	"errors"
	"fmt"
	"syscall"
	"testing"
	"time"
)

// RebindTimeout is how long Rebind waits for an old address to come free:
// long enough for a busy CI machine, short of the test binary's timeout.
const RebindTimeout = 30 * time.Second

// Rebind is for a test that restarts a server on the address it had
// before, because what it serves must be found there again (the sync
// address agents dial). The port is not the test's to keep once the old
// server is gone: another socket, in this process or another test's, may
// hold it for a while ("address already in use"). Rebind calls bind until
// it stops failing with EADDRINUSE, for at most RebindTimeout, and fails
// the test saying the address never came free; any other error fails it
// at once. Every other address of the restarted server (admin, metrics,
// DNS) is not for Rebind: bind it anew on port 0 and read it back.
func Rebind(t testing.TB, addr string, bind func() error) {
	t.Helper()
	if err := rebind(addr, RebindTimeout, bind); err != nil {
		t.Fatal(err)
	}
}

// rebind is Rebind's loop, returning what Rebind fails with.
func rebind(addr string, timeout time.Duration, bind func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := bind()
		if err == nil {
			return nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			return fmt.Errorf("start on %s: %w", addr, err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("start on %s: the address never came free in %v (another socket holds the port): %w", addr, timeout, err)
		}
		time.Sleep(20 * time.Millisecond) // poll interval
	}
}
