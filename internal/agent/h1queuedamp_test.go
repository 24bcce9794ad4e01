package agent

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// startAmpEcho serves, on a raw socket, each POST with a Content-Length
// body by answering at once with a head of Content-Length amp times the
// body's, then, for each piece of the body it reads, amp copies of it: an
// endpoint that answers as it reads, more than it reads (a hex dump, a
// decompressor), and reads no more while its answer's write waits.
func startAmpEcho(t *testing.T, amp, rcvbuf int) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
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
				c.(*net.TCPConn).SetReadBuffer(rcvbuf) // the least the kernel allows
				br := bufio.NewReader(c)
				buf := make([]byte, 4096)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", int64(amp)*max(req.ContentLength, 0))
					for {
						n, err := req.Body.Read(buf)
						if n > 0 {
							if _, werr := c.Write(bytes.Repeat(buf[:n], amp)); werr != nil {
								return
							}
						}
						if err == io.EOF {
							break
						}
						if err != nil {
							return
						}
					}
				}
			}(c)
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestFastQueuedRestAmplifyingEcho: a client writes a POST of 60 KiB
// whole, its body's rest all in the socket as the round trip asks
// (restQueued: read and written on the round trip's goroutine before the
// answer is read), to an endpoint that answers as it reads, 16 bytes for
// each, with the smallest receive buffer it can have. Its answer fills
// the sockets long before the body is written; the write must not wait
// on it (the agent's send buffer takes the rest: on loopback it holds
// megabytes from the connect on, a connection over a NIC's MTU ~80 KiB;
// a rest over what it has free goes full duplex instead, SendRoom:
// TestFastQueuedRestSmallSendBuffer). The answer must come whole, twice
// on one connection.
func TestFastQueuedRestAmplifyingEcho(t *testing.T) {
	const amp = 16
	f := agentInFront(t, inFront{node: "qamp", octet: 253, svc: "qamp", vipPort: 19975, port: startAmpEcho(t, amp, 1), noRequest: true})
	c, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	body := strings.Repeat("0123456789abcdef", (60<<10)/16)
	for i := 0; i < 2; i++ {
		c.SetDeadline(time.Now().Add(20 * time.Second))
		msg := "POST /amp HTTP/1.1\r\nHost: qamp\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
		wrote := make(chan error, 1)
		go func() { _, err := io.WriteString(c, msg); wrote <- err }() // whole, in one write
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || n != int64(amp*len(body)) {
			t.Fatalf("request %d: %d of %d bytes of the answer, %v (the body's rest, written before the answer was read, stalled?)", i, n, amp*len(body), err)
		}
		if err := <-wrote; err != nil {
			t.Fatal(err)
		}
	}
}
