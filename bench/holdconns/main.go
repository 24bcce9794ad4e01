// Command holdconns opens N TCP connections to an address and keeps them
// open, to measure what idle proxied connections cost a proxy. Each
// connection sends one byte and waits for it to come back, so "up" means the
// whole path (client -> proxy -> backend) is established, not just the
// proxy's accept backlog. It prints "up N <ms>" once all are up, then holds
// them until SIGINT/SIGTERM, -hold elapses or (with -stdin) stdin closes.
// (Without -stdin, stdin is ignored: a background job's stdin is /dev/null.)
//
// With -serve ADDR it is the backend instead: it accepts connections, echoes
// what it reads, and holds them until the peer closes.
package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	serve := flag.String("serve", "", "run as the echo/hold backend on this address")
	n := flag.Int("n", 1000, "connections to open")
	hold := flag.Duration("hold", 60*time.Second, "hold at most this long")
	timeout := flag.Duration("timeout", 20*time.Second, "time allowed to open all connections")
	watchStdin := flag.Bool("stdin", false, "also stop when stdin closes")
	flag.Parse()
	if *serve != "" {
		runServer(*serve)
		return
	}
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: holdconns [-n N] [-hold D] ADDR | holdconns -serve ADDR")
		os.Exit(2)
	}
	addr := flag.Arg(0)
	deadline := time.Now().Add(*timeout)
	conns := make([]net.Conn, 0, *n)
	start := time.Now()
	for i := 0; i < *n; i++ {
		c, err := net.DialTimeout("tcp", addr, time.Until(deadline))
		if err == nil {
			c.SetDeadline(deadline)
			var b [1]byte
			if _, err = c.Write([]byte{'x'}); err == nil {
				_, err = io.ReadFull(c, b[:])
			}
			c.SetDeadline(time.Time{})
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "holdconns: connection %d: %v\n", i+1, err)
			os.Exit(1)
		}
		conns = append(conns, c)
	}
	fmt.Printf("up %d %.0fms\n", len(conns), float64(time.Since(start).Microseconds())/1000)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	stdin := make(chan struct{})
	if *watchStdin {
		go func() { io.Copy(io.Discard, os.Stdin); close(stdin) }()
	}
	select {
	case <-sig:
	case <-stdin:
	case <-time.After(*hold):
	}
	for _, c := range conns {
		c.Close()
	}
}

func runServer(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "holdconns:", err)
		os.Exit(1)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, "holdconns:", err)
			os.Exit(1)
		}
		go func() {
			defer c.Close()
			buf := make([]byte, 512)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					if _, werr := c.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
	}
}
