package agent

import (
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// fusedIdleDoc is an http service with a short idle timeout (timeouts.idle).
func fusedIdleDoc(name string, port int, idle time.Duration) string {
	return fmt.Sprintf(`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":%q,"namespace":"demo"},
	"spec":{"ports":[{"name":"web","port":%d,"protocol":"http"}],"timeouts":{"idle":%q}}}`, name, port, idle.String())
}

// TestH1FusedClientGoneIdleClosedAtIdleTimeout: a client whose responses
// were held and fused (back to back) and that then sends nothing is
// closed at the service's idle timeout: the fused read's wait ends at
// fuseRecheck, and the rest of it is the idle timeout's, not fuseRecheck's
// (closed at once) and not none (kept for good).
func TestH1FusedClientGoneIdleClosedAtIdleTimeout(t *testing.T) {
	const idle = 400 * time.Millisecond
	addr := agentInFront(t, inFront{node: "n", octet: 102, svc: "fidle", vipPort: 19702, port: startRawBackend(t),
		doc: fusedIdleDoc("fidle", 19702, idle)}).addr
	var rechecks atomic.Int64
	hook := func() { rechecks.Add(1) }
	fuseRecheckedHook.Store(&hook)
	defer fuseRecheckedHook.Store(nil)
	for round := range 3 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(20 * time.Second))
		for range 10 { // back to back: the last responses are held and fused
			rawExchange(t, c, "fidle.demo")
		}
		before := rechecks.Load()
		start := time.Now()
		var b [1]byte
		n, err := c.Read(b[:])
		took := time.Since(start)
		c.Close()
		if n != 0 || err != io.EOF {
			t.Fatalf("round %d: idle client read %q %v; want EOF from the idle close", round, b[:n], err)
		}
		if took < idle*3/4 || took > idle+3*time.Second {
			t.Fatalf("round %d: idle client closed after %v; want the idle timeout, %v", round, took, idle)
		}
		if rechecks.Load() > before {
			return // the last response was fused: its wait ran out at fuseRecheck, then the idle timeout's
		}
	}
	t.Fatal("no round's last response was held for a fused read: the test did not test it")
}

// TestH1FusedPostThenSlowHeadServed: after a fused response to a POST with
// no body, the trailing CRLF some clients send, alone, then a head in
// parts, each after more than fuseRecheck, is served: the CRLF skip's
// reads (before the head's deadline is set) wait under the idle
// timeout's deadline, not fuseRecheck's.
func TestH1FusedPostThenSlowHeadServed(t *testing.T) {
	addr := agentInFront(t, inFront{node: "n", octet: 102, svc: "fpost", vipPort: 19703, port: startRawBackend(t)}).addr
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	var buf [4096]byte
	readOKRaw := func(what string) {
		n := 0
		for n < 6 || string(buf[n-6:n]) != "\r\n\r\nok" {
			m, err := c.Read(buf[n:])
			if err != nil {
				t.Fatalf("%s: %v (after %q)", what, err, buf[:n])
			}
			n += m
		}
	}
	for round := range 5 {
		for range 5 {
			io.WriteString(c, "POST / HTTP/1.1\r\nHost: fpost.demo\r\nContent-Length: 0\r\n\r\n")
			readOKRaw("post")
		}
		io.WriteString(c, "\r\n")               // the CRLF some clients send after a POST, alone: fewer than the skip's 4 bytes
		pause := time.NewTimer(3 * fuseRecheck) // the client's own pause, not a wait for the agent
		<-pause.C
		io.WriteString(c, "GE")
		pause.Reset(3 * fuseRecheck)
		<-pause.C
		io.WriteString(c, "T / HTTP/1.1\r\n")
		pause.Reset(3 * fuseRecheck)
		<-pause.C
		io.WriteString(c, "Host: fpost.demo\r\n\r\n")
		readOKRaw(fmt.Sprintf("round %d: split head after POSTs", round))
	}
}
