// Command tailwait splits the time an HTTP/1.1 proxy's connection
// goroutines spend on each request, from a runtime trace, to show what its
// slowest requests wait on (issue 14, BENCHMARKS.md session 29). A request
// runs from the wake of the goroutine's client read (the request arrived)
// to its next block on a client read (the response written); in between
// it waits to run once runnable (the scheduler, and the OS for the thread),
// runs, and waits on the upstream read. Per slice of requests (all, the
// fastest half, the slowest 1 % and 0.1 %) it prints the mean of each part,
// the share that overlapped a GC mark phase or a stop-the-world pause, and
// the share whose idle gap before held a spurious wake: a client-read wake
// that found nothing and blocked again (a read deadline's timer, as the
// agent's fused-read recheck).
//
// A block is a client read or an upstream read by the stack's function
// names (-client and -up, regular expressions, tried on each frame; the
// defaults fit the agent's HTTP/1.1 path: h1Wire and the pool's upWire).
//
// Usage: tailwait [-client RE] [-up RE] [-list] TRACE
package main

import (
	"flag"
	"fmt"
	"os"
	"regexp"
)

func main() {
	client := flag.String("client", `\(\*h1Wire\)\.Read$`, "a client read's frame (regular expression)")
	up := flag.String("up", `\(\*upWire\)\.Read$`, "an upstream read's frame (regular expression)")
	list := flag.Bool("list", false, "list the slowest 0.1 % of requests one by one")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: tailwait [-client RE] [-up RE] [-list] TRACE")
		os.Exit(2)
	}
	cre, err := regexp.Compile(*client)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tailwait: -client:", err)
		os.Exit(2)
	}
	ure, err := regexp.Compile(*up)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tailwait: -up:", err)
		os.Exit(2)
	}
	f, err := os.Open(flag.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, "tailwait:", err)
		os.Exit(1)
	}
	defer f.Close()
	res, err := analyze(f, cre, ure)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tailwait:", err)
		os.Exit(1)
	}
	res.print(os.Stdout, *list)
}
