package agent

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// startSlowTakerSmallMSS serves, on a raw socket whose listener
// advertises a small MSS and the least receive buffer (the agent's
// upstream socket then has a send buffer of tens of KiB, as over a NIC,
// not loopback's megabytes), each POST with a Content-Length body by
// answering its head at once, then taking the body only after a pause
// longer than earlyResponseWait (an endpoint busy before it reads), and
// ending the answer with the SHA-256 of what it read, in hex.
func startSlowTakerSmallMSS(t *testing.T) int {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_MAXSEG, 536); serr == nil {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 1)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 64\r\n\r\n")
					time.Sleep(3 * earlyResponseWaitForTest) // the endpoint's own pace: busy before it reads
					h := sha256.New()
					if _, err := io.Copy(h, req.Body); err != nil {
						return
					}
					if _, err := io.WriteString(c, hex.EncodeToString(h.Sum(nil))); err != nil {
						return
					}
				}
			}(c)
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

// earlyResponseWaitForTest is httpproxy's earlyResponseWait: how long a
// stalled write of a request waits before it looks for an early answer.
const earlyResponseWaitForTest = 100 * time.Millisecond

// TestFastQueuedRestSmallSendBuffer: a client writes a POST of 60 KiB
// whole (its body's rest all in the socket: restQueued) to an endpoint
// that answers its head at once and takes the body only a while later,
// behind the least receive buffer and a small MSS, so the agent's
// upstream socket has room for a part of the rest only. The rest must go
// on beside the answer (full duplex), not be written on the round trip's
// goroutine, where its write stalled and was taken for an early answer
// (onStall: the endpoint never got the rest, and the answer never came
// whole). The endpoint must get the body whole (its hash in the answer),
// twice on one connection.
func TestFastQueuedRestSmallSendBuffer(t *testing.T) {
	f := agentInFront(t, inFront{node: "qroom", octet: 118, svc: "qroom", vipPort: 11801, port: startSlowTakerSmallMSS(t), noRequest: true})
	c, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	for i := 0; i < 2; i++ {
		body := strings.Repeat(fmt.Sprintf("%016d", i), (60<<10)/16)
		sum := sha256.Sum256([]byte(body))
		c.SetDeadline(time.Now().Add(20 * time.Second))
		msg := "POST /slow HTTP/1.1\r\nHost: qroom\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
		wrote := make(chan error, 1)
		go func() { _, err := io.WriteString(c, msg); wrote <- err }() // whole, in one write
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || string(got) != hex.EncodeToString(sum[:]) || resp.StatusCode != 200 {
			t.Fatalf("request %d: %d %q, %v; want 200 and the body's hash (the rest's write stalled and was taken for an early answer?)", i, resp.StatusCode, got, err)
		}
		if err := <-wrote; err != nil {
			t.Fatal(err)
		}
	}
}
