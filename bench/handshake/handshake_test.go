package handshake

import (
	"crypto/tls"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/bench/benchpki"
)

// BenchmarkTLSHandshake measures mutual TLS 1.3 handshakes over loopback
// TCP, one at a time, client and server in this process (both ends' CPU
// counts, on the same cores). Each op is: dial, client and server
// handshakes both complete (the server has verified the client's
// certificate), the server writes one byte, the client reads it (and with
// it the session ticket), both close. Besides the rate it reports the
// process's CPU time per handshake, both ends together. For each key
// exchange:
//
//	KEX/full     no resumption: ECDHE (or hybrid) plus ECDSA P-256 signatures and chain checks both ways
//	KEX/resumed  session resumption from a ticket (PSK with (EC)DHE): no certificates
//
// KEX is X25519MLKEM768 (Go's default, the one a default tls.Config uses)
// or X25519. The server issues tickets in every case, as a mesh listener
// would.
func BenchmarkTLSHandshake(b *testing.B) {
	set, err := benchpki.Generate()
	if err != nil {
		b.Fatal(err)
	}
	srvCfg := benchpki.ServerConfig(set.Pool, set.Leaves["b"].Cert)
	for _, kex := range []tls.CurveID{tls.X25519MLKEM768, tls.X25519} {
		for _, resume := range []bool{false, true} {
			name := kex.String() + "/full"
			if resume {
				name = kex.String() + "/resumed"
			}
			b.Run(name, func(b *testing.B) {
				c := benchpki.ClientConfig(set.Pool, set.Leaves["a"].Cert, "b")
				c.CurvePreferences = []tls.CurveID{kex}
				if resume {
					c.ClientSessionCache = tls.NewLRUClientSessionCache(8)
				}
				run(b, srvCfg, c, resume)
			})
		}
	}
}

func run(b *testing.B, srvCfg, cliCfg *tls.Config, resume bool) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		serve(ln, srvCfg)
	}()
	defer wg.Wait()
	defer ln.Close()

	addr := ln.Addr().String()
	if resume { // the first connection gets the ticket the others resume
		if _, err := handshake(addr, cliCfg); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	cpu0 := cpuTime(b)
	for b.Loop() {
		did, err := handshake(addr, cliCfg)
		if err != nil {
			b.Fatal(err)
		}
		if did != resume {
			b.Fatalf("DidResume = %v, want %v", did, resume)
		}
	}
	cpu := cpuTime(b) - cpu0
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
	// On a shared machine the wall-clock rate waits for CPUs; the CPU time
	// per handshake (client and server together) does not.
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/op")
}

// cpuTime is the user+system CPU time this process has used.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// handshake runs one client connection and reports whether it resumed.
func handshake(addr string, cfg *tls.Config) (bool, error) {
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		return false, err
	}
	c := tls.Client(raw, cfg)
	defer c.Close()
	if err := c.Handshake(); err != nil {
		return false, err
	}
	var buf [1]byte
	if _, err := io.ReadFull(c, buf[:]); err != nil {
		return false, err
	}
	return c.ConnectionState().DidResume, nil
}

// serve handshakes with each connection in turn, writes one byte and
// closes, until ln is closed.
func serve(ln net.Listener, cfg *tls.Config) {
	for {
		raw, err := ln.Accept()
		if err != nil {
			return
		}
		c := tls.Server(raw, cfg)
		// A failed handshake fails the benchmark on the client's side.
		if err := c.Handshake(); err == nil {
			c.Write([]byte{1})
		}
		c.Close()
	}
}
