// Command tlspair is a bare two-process Go relay pair, client → A → B →
// backend, the reference bench/security.sh measures fogmesh's two-agent mesh
// path against (issue 5). It has the agents' shape and nothing else: A
// accepts plain TCP and carries each connection to B over the A→B transport
// of the chosen mode; B dials the backend; both relay with io.Copy as
// internal/proxy.Relay does, half-closing each direction.
//
// Modes (the A→B transport):
//
//	tcp        a TCP connection per proxied connection
//	yamux      one yamux session (the config of internal/transport), a stream per connection
//	tls        a mutual TLS 1.3 connection per proxied connection (session resumption on)
//	tls-yamux  one mutual TLS 1.3 connection carrying the yamux session
//
// Wire: every A→B connection or stream starts with one byte, the index of
// the route (A's i-th LISTEN goes to B's i-th TARGET); B sends nothing back
// before relaying.
//
// Usage:
//
//	tlspair gen DIR                                   throwaway CA + leaves a and b (ECDSA P-256), keys 0600
//	tlspair b -mode MODE -listen ADDR [-certs DIR] TARGET...
//	tlspair a -mode MODE -peer ADDR [-certs DIR] LISTEN...
//	tlspair probe ADDR                                exit 0 if ADDR completes a TLS 1.3 handshake
//
// Every address must be a literal loopback IP and port. SIGTERM or SIGINT
// closes the listeners and every connection, then exits 0.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"syscall"

	"github.com/fogmesh/fogmesh/bench/benchpki"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var err error
	switch os.Args[1] {
	case "gen":
		if len(os.Args) != 3 {
			usage()
		}
		err = runGen(os.Args[2])
	case "a", "b":
		err = runRelay(ctx, os.Args[1], os.Args[2:])
	case "probe":
		if len(os.Args) != 3 {
			usage()
		}
		err = runProbe(os.Args[2])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "tlspair:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprint(os.Stderr, `usage:
  tlspair gen DIR
  tlspair b -mode tcp|yamux|tls|tls-yamux -listen ADDR [-certs DIR] TARGET...
  tlspair a -mode tcp|yamux|tls|tls-yamux -peer ADDR [-certs DIR] LISTEN...
  tlspair probe ADDR
`)
	os.Exit(2)
}

func runGen(dir string) error {
	set, err := benchpki.Generate()
	if err != nil {
		return err
	}
	return set.WriteDir(dir)
}

// relayArgs are the flags of "a" and "b".
type relayArgs struct {
	side     string   // "a" or "b"
	mode     string   // tcp, yamux, tls, tls-yamux
	listen   string   // b: the A→B listen address
	peer     string   // a: B's address
	certs    string   // directory written by gen; tls modes only
	maxConns int      // proxied connections at once; more are refused
	resume   bool     // a, mode tls: TLS session resumption
	addrs    []string // a: LISTEN addresses; b: TARGET addresses
}

func runRelay(ctx context.Context, side string, argv []string) error {
	fs := flag.NewFlagSet("tlspair "+side, flag.ExitOnError)
	args := relayArgs{side: side}
	fs.StringVar(&args.mode, "mode", "tcp", "A→B transport: tcp, yamux, tls, tls-yamux")
	fs.StringVar(&args.certs, "certs", "", "directory written by `tlspair gen` (tls modes)")
	fs.IntVar(&args.maxConns, "max-conns", 4096, "proxied connections at once; more are closed at accept")
	if side == "b" {
		fs.StringVar(&args.listen, "listen", "", "address A connects to (loopback ip:port)")
	} else {
		fs.StringVar(&args.peer, "peer", "", "B's address (loopback ip:port)")
		fs.BoolVar(&args.resume, "resume", true, "mode tls: resume TLS sessions (tickets) instead of a full handshake per connection")
	}
	fs.Parse(argv)
	args.addrs = fs.Args()
	if err := args.validate(); err != nil {
		return err
	}
	if side == "b" {
		return runB(ctx, args)
	}
	return runA(ctx, args)
}

func (a *relayArgs) validate() error {
	switch a.mode {
	case "tcp", "yamux", "tls", "tls-yamux":
	default:
		return fmt.Errorf("unknown -mode %q", a.mode)
	}
	if a.tls() && a.certs == "" {
		return fmt.Errorf("-mode %s needs -certs", a.mode)
	}
	if len(a.addrs) == 0 || len(a.addrs) > 256 {
		return fmt.Errorf("want 1 to 256 addresses, got %d", len(a.addrs))
	}
	if a.maxConns < 1 || a.maxConns > 1<<16 {
		return fmt.Errorf("-max-conns %d out of range 1..65536", a.maxConns)
	}
	all := append([]string{}, a.addrs...)
	if a.side == "b" {
		all = append(all, a.listen)
	} else {
		all = append(all, a.peer)
	}
	for _, s := range all {
		if err := loopback(s); err != nil {
			return err
		}
	}
	return nil
}

func (a *relayArgs) tls() bool   { return a.mode == "tls" || a.mode == "tls-yamux" }
func (a *relayArgs) yamux() bool { return a.mode == "yamux" || a.mode == "tls-yamux" }

// loopback accepts only a literal loopback ip:port: this tool never sends
// traffic off the machine.
func loopback(s string) error {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return fmt.Errorf("address %q: want a literal ip:port: %w", s, err)
	}
	if !ap.Addr().IsLoopback() {
		return fmt.Errorf("address %q is not loopback", s)
	}
	return nil
}
