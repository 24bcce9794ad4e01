// Command splicerelay is the smallest useful TCP relay: accept, dial, two
// io.Copy between *net.TCPConn (splice(2) on Linux), half-close. bench.sh
// uses it as the ceiling for a userspace Go L4 proxy.
//
// Usage: splicerelay LISTEN=TARGET [LISTEN=TARGET ...]
package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"strings"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: splicerelay LISTEN=TARGET ...")
		os.Exit(2)
	}
	for _, arg := range os.Args[1:] {
		listen, target, ok := strings.Cut(arg, "=")
		if !ok {
			fmt.Fprintf(os.Stderr, "splicerelay: bad pair %q\n", arg)
			os.Exit(2)
		}
		ln, err := net.Listen("tcp", listen)
		if err != nil {
			fmt.Fprintln(os.Stderr, "splicerelay:", err)
			os.Exit(1)
		}
		go serve(ln, target)
	}
	select {}
}

func serve(ln net.Listener, target string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, "splicerelay:", err)
			os.Exit(1)
		}
		go func() {
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				return
			}
			a, b := c.(*net.TCPConn), up.(*net.TCPConn)
			done := make(chan struct{})
			go func() { io.Copy(b, a); b.CloseWrite(); close(done) }()
			io.Copy(a, b)
			a.CloseWrite()
			<-done
			a.Close()
			b.Close()
		}()
	}
}
