package testenv

import (
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestRebindWaitsForTheAddress: a restart on an address another socket
// holds succeeds once that socket lets go, on the same address.
func TestRebindWaitsForTheAddress(t *testing.T) {
	holder, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := holder.Addr().String()
	var once sync.Once
	var ln net.Listener
	tries := 0
	Rebind(t, addr, func() error {
		tries++
		var err error
		ln, err = net.Listen("tcp", addr)
		if err != nil {
			once.Do(func() { holder.Close() }) // the holder lets go after the first refusal
		}
		return err
	})
	defer ln.Close()
	if tries < 2 || ln.Addr().String() != addr {
		t.Fatalf("bound %s after %d tries, want %s after a refusal", ln.Addr(), tries, addr)
	}
}

// TestRebindGivesUp: an address that never comes free fails in bounded
// time, naming the address and why; another error fails at once.
func TestRebindGivesUp(t *testing.T) {
	holder, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	addr := holder.Addr().String()
	err = rebind(addr, 100*time.Millisecond, func() error {
		ln, err := net.Listen("tcp", addr)
		if err == nil {
			ln.Close()
		}
		return err
	})
	if err == nil || !strings.Contains(err.Error(), addr) || !strings.Contains(err.Error(), "never came free") {
		t.Fatalf("held address: %v", err)
	}
	tries := 0
	boom := errors.New("boom")
	if err := rebind(addr, time.Minute, func() error { tries++; return boom }); !errors.Is(err, boom) || tries != 1 {
		t.Fatalf("other error: %v after %d tries", err, tries)
	}
}
