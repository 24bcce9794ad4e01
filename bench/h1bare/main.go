// Command h1bare is the smallest HTTP/1.1 keep-alive reverse proxy in Go,
// in two models, as ceilings for the agent's HTTP/1.1 path (issue 14):
//
//   - go: a goroutine per client connection, with its own upstream
//     connection, reading and writing with httpproxy.RawIO as the agent
//     does;
//   - epoll: one event loop (or -loops of them) over raw descriptors taken
//     out of Go's poller, reading and writing with read(2) and write(2) as
//     nginx's worker does; level-triggered, one epoll_wait per batch.
//
// Both forward only what a benchmark sends: requests without a body
// (Content-Length and Transfer-Encoding refused) and responses framed by
// Content-Length; anything else, and a write the socket does not take
// whole, closes the connection. No routing, headers, metrics or policy:
// the difference to the agent is what those and the agent's conformance
// cost; the difference between the models is what the goroutine model
// costs. bench.sh runs both as rows (g7) and (e7) of its HTTP/1.1 list.
//
// -pprof ADDR serves net/http/pprof on ADDR (loopback only), for
// bench/h1prof.sh's runtime traces (TRACE=1).
//
// Two knobs of the go model make it resemble the agent in one respect at a
// time, to tell what the agent's extra kernel time per request comes from
// (issue 14, session 32): -spin D burns about D of user CPU per request
// (half before the request goes upstream, half before the response goes
// back), as the agent's parsing and policy do; -fwdheaders adds the four
// header fields the agent adds to a request it forwards (X-Fogmesh-Source-Id,
// X-Forwarded-For, -Host, -Proto: about 155 bytes); -touch N reads N bytes
// of a process-wide buffer per request (one load per 64-byte line, half at
// a time), a bigger memory footprint that evicts the kernel's lines from
// the caches as a bigger program's does.
//
// Usage: h1bare [-model go|epoll] [-loops N] [-pprof ADDR] [-spin D] [-fwdheaders] [-touch N] LISTEN=TARGET
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	_ "net/http/pprof"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fogmesh/fogmesh/internal/httpproxy"
)

func main() {
	model := flag.String("model", "go", "go (a goroutine per connection) or epoll (event loops over raw descriptors)")
	loops := flag.Int("loops", 1, "event loops (epoll model)")
	pprofAddr := flag.String("pprof", "", "serve net/http/pprof on this loopback address:port")
	spin := flag.Duration("spin", 0, "go model: burn about this much user CPU per request")
	flag.BoolVar(&fwdHeaders, "fwdheaders", false, "go model: add the agent's forwarding header fields to each request")
	touch := flag.Int("touch", 0, "go model: read this many bytes of a buffer per request")
	flag.Parse()
	spinIters = calibrateSpin(*spin)
	if *touch > 0 {
		touchBuf = make([]byte, *touch)
		for i := range touchBuf {
			touchBuf[i] = byte(i)
		}
	}
	if *pprofAddr != "" {
		if ap, err := netip.ParseAddrPort(*pprofAddr); err != nil || !ap.Addr().IsLoopback() {
			fmt.Fprintln(os.Stderr, "h1bare: -pprof: not a loopback address:port:", *pprofAddr)
			os.Exit(2)
		}
		pln, err := net.Listen("tcp", *pprofAddr)
		if err != nil {
			fmt.Fprintln(os.Stderr, "h1bare:", err)
			os.Exit(1)
		}
		go http.Serve(pln, nil)
	}
	listen, target, ok := strings.Cut(flag.Arg(0), "=")
	if flag.NArg() != 1 || !ok || (*model != "go" && *model != "epoll") || *loops < 1 {
		fmt.Fprintln(os.Stderr, "usage: h1bare [-model go|epoll] [-loops N] [-pprof ADDR] LISTEN=TARGET")
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "h1bare:", err)
		os.Exit(1)
	}
	fmt.Fprintln(os.Stderr, "h1bare:", proxy(ln, target, *model, *loops))
	os.Exit(1)
}

// proxy serves ln until it fails, forwarding to target.
func proxy(ln net.Listener, target, model string, loops int) error {
	var ls []*loop
	if model == "epoll" {
		for range loops {
			l, err := newLoop()
			if err != nil {
				return err
			}
			ls = append(ls, l)
			go l.run()
		}
	}
	for i := 0; ; i++ {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		if ls == nil {
			go serve(c, target)
		} else if err := ls[i%len(ls)].add(c, target); err != nil {
			fmt.Fprintln(os.Stderr, "h1bare:", err)
		}
	}
}

const bufSize = 16 << 10

// The go model's experiment knobs (-spin, -fwdheaders).
var (
	spinIters  int // spinWork's iterations per request, half at a time
	fwdHeaders bool
)

// agentHeaders are the header fields the agent adds to a request it
// forwards to a local endpoint of a service (127.0.0.1 client, VIP host).
const agentHeaders = "X-Fogmesh-Source-Id: spiffe://fogmesh.local/ns/bench/sa/webl7\r\n" +
	"X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Host: 127.100.0.1:30520\r\nX-Forwarded-Proto: http\r\n"

// sink keeps the knobs' work from being optimised away: each connection
// adds its result when it ends.
var sink atomic.Uint64

var touchBuf []byte // -touch

// work is the per-request work of the knobs, half of it at a time, folded
// into acc.
func work(acc uint64, second bool) uint64 {
	acc = spinWork(acc, spinIters)
	b := touchBuf
	if second {
		b = b[len(b)/2:]
	} else {
		b = b[:len(b)/2]
	}
	var x byte
	for i := 0; i < len(b); i += 64 {
		x += b[i]
	}
	return acc + uint64(x)
}

// spinWork burns CPU in user mode: n rounds of xorshift from x.
func spinWork(x uint64, n int) uint64 {
	x |= 1
	for range n {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
	}
	return x
}

// calibrateSpin returns spinWork's iterations for d/2 of CPU.
func calibrateSpin(d time.Duration) int {
	if d <= 0 {
		return 0
	}
	const n = 1 << 22
	best := time.Duration(1 << 62)
	for range 5 {
		t0 := time.Now()
		sink.Add(spinWork(uint64(t0.UnixNano()), n))
		if e := time.Since(t0); e < best {
			best = e
		}
	}
	return int(float64(n) * float64(d/2) / float64(best))
}

var crlf2 = []byte("\r\n\r\n")

// requestEnd returns the length of the bodyless request head at the start
// of b: 0 if it is not complete yet, -1 if it has a body or is too large.
func requestEnd(b []byte) int {
	i := bytes.Index(b, crlf2)
	if i < 0 {
		if len(b) >= bufSize {
			return -1
		}
		return 0
	}
	head := b[:i+2]
	if v, ok := headerValue(head, "content-length"); ok && v != "0" {
		return -1
	}
	if _, ok := headerValue(head, "transfer-encoding"); ok {
		return -1
	}
	return i + 4
}

// responseEnd returns the length of the whole response (head and body) at
// the start of b: 0 if it is not all there yet, -1 if it is not framed by
// Content-Length or does not fit.
func responseEnd(b []byte) int {
	i := bytes.Index(b, crlf2)
	if i < 0 {
		if len(b) >= bufSize {
			return -1
		}
		return 0
	}
	v, ok := headerValue(b[:i+2], "content-length")
	n, err := strconv.Atoi(v)
	if !ok || err != nil || n < 0 || i+4+n > bufSize {
		return -1
	}
	if len(b) < i+4+n {
		return 0
	}
	return i + 4 + n
}

// headerValue finds a header field by its lower-case name in head (the
// lines after the first, each ending in CRLF).
func headerValue(head []byte, name string) (string, bool) {
	_, rest, _ := bytes.Cut(head, []byte("\r\n"))
	for len(rest) > 0 {
		var line []byte
		line, rest, _ = bytes.Cut(rest, []byte("\r\n"))
		k, v, ok := bytes.Cut(line, []byte(":"))
		if ok && len(k) == len(name) && strings.EqualFold(string(k), name) {
			return string(bytes.TrimSpace(v)), true
		}
	}
	return "", false
}

// serve is the go model: one client connection and its upstream one.
func serve(c net.Conn, target string) {
	defer c.Close()
	u, err := net.Dial("tcp", target)
	if err != nil {
		return
	}
	defer u.Close()
	cr, ur := httpproxy.NewRawIO(c), httpproxy.NewRawIO(u)
	in, out := make([]byte, bufSize), make([]byte, bufSize)
	var acc uint64 // the knobs' work (sink)
	defer func() { sink.Add(acc) }()
	var fwd []byte // the request with fwdHeaders
	if fwdHeaders {
		fwd = make([]byte, 0, bufSize+len(agentHeaders))
	}
	n := 0
	for {
		end := requestEnd(in[:n])
		for end == 0 {
			m, err := cr.Read(in[n:])
			if err != nil {
				return
			}
			n += m
			end = requestEnd(in[:n])
		}
		if end < 0 {
			return
		}
		acc = work(acc, false)
		req := in[:end]
		if fwdHeaders {
			req = append(append(append(fwd[:0], in[:end-2]...), agentHeaders...), "\r\n"...)
		}
		if _, err := ur.Write(req); err != nil {
			return
		}
		n = copy(in, in[end:n])
		un, rend := 0, 0
		for rend == 0 {
			m, err := ur.Read(out[un:])
			if err != nil {
				return
			}
			un += m
			rend = responseEnd(out[:un])
		}
		if rend < 0 || rend != un {
			return
		}
		acc = work(acc, true)
		if _, err := cr.Write(out[:rend]); err != nil {
			return
		}
	}
}

// loop is one event loop of the epoll model.
type loop struct {
	ep    int
	mu    sync.Mutex
	pairs map[int32]*pair // by either descriptor
}

// pair is a client connection and its upstream one.
type pair struct {
	c, u    int32
	in, out []byte
	n, un   int
	waiting bool // a request is upstream, its response not yet back
}

func newLoop() (*loop, error) {
	ep, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	return &loop{ep: ep, pairs: map[int32]*pair{}}, nil
}

// rawFD takes c's descriptor out of Go's poller: a duplicate (non-blocking,
// as the original) for the loop, the original closed.
func rawFD(c net.Conn) (int32, error) {
	defer c.Close()
	sc, ok := c.(syscall.Conn)
	if !ok {
		return 0, errors.New("not a socket")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0, err
	}
	fd, derr := -1, error(nil)
	if err := rc.Control(func(s uintptr) { fd, derr = syscall.Dup(int(s)) }); err != nil {
		return 0, err
	}
	if derr != nil {
		return 0, derr
	}
	syscall.CloseOnExec(fd)
	return int32(fd), syscall.SetNonblock(fd, true)
}

func (l *loop) add(c net.Conn, target string) error {
	u, err := net.Dial("tcp", target)
	if err != nil {
		c.Close()
		return err
	}
	cfd, err := rawFD(c)
	if err != nil {
		u.Close()
		return err
	}
	ufd, err := rawFD(u)
	if err != nil {
		syscall.Close(int(cfd))
		return err
	}
	p := &pair{c: cfd, u: ufd, in: make([]byte, bufSize), out: make([]byte, bufSize)}
	l.mu.Lock()
	l.pairs[cfd], l.pairs[ufd] = p, p
	l.mu.Unlock()
	for _, fd := range []int32{cfd, ufd} {
		ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP, Fd: fd}
		if err := syscall.EpollCtl(l.ep, syscall.EPOLL_CTL_ADD, int(fd), &ev); err != nil {
			l.close(p)
			return err
		}
	}
	return nil
}

func (l *loop) close(p *pair) {
	l.mu.Lock()
	delete(l.pairs, p.c)
	delete(l.pairs, p.u)
	l.mu.Unlock()
	syscall.Close(int(p.c)) // also leaves the epoll set
	syscall.Close(int(p.u))
}

func (l *loop) run() {
	events := make([]syscall.EpollEvent, 128)
	for {
		n, err := syscall.EpollWait(l.ep, events, -1)
		if err != nil {
			if err == syscall.EINTR {
				continue
			}
			fmt.Fprintln(os.Stderr, "h1bare: epoll_wait:", err)
			os.Exit(1)
		}
		for _, ev := range events[:n] {
			l.mu.Lock()
			p := l.pairs[ev.Fd]
			l.mu.Unlock()
			if p == nil {
				continue // closed by an earlier event of this batch
			}
			ok := true
			if ev.Fd == p.c {
				ok = p.fromClient()
			} else {
				ok = p.fromUpstream()
			}
			if !ok {
				l.close(p)
			}
		}
	}
}

// readSome reads once into b; false: EOF or an error (EAGAIN is fine).
func readSome(fd int32, b []byte) (int, bool) {
	n, err := syscall.Read(int(fd), b)
	switch {
	case err == syscall.EAGAIN || err == syscall.EINTR:
		return 0, true
	case err != nil || n == 0:
		return 0, false
	}
	return n, true
}

// writeAll writes b whole; false if the socket does not take it at once.
func writeAll(fd int32, b []byte) bool {
	for len(b) > 0 {
		n, err := syscall.Write(int(fd), b)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return false
		}
		b = b[n:]
	}
	return true
}

func (p *pair) fromClient() bool {
	if p.n == len(p.in) {
		return false // a client that sends while its request waits, past the buffer
	}
	m, ok := readSome(p.c, p.in[p.n:])
	if !ok {
		return false
	}
	p.n += m
	return p.next()
}

// next sends the next buffered request upstream, if none is there.
func (p *pair) next() bool {
	if p.waiting {
		return true
	}
	end := requestEnd(p.in[:p.n])
	if end <= 0 {
		return end == 0
	}
	if !writeAll(p.u, p.in[:end]) {
		return false
	}
	p.n = copy(p.in, p.in[end:p.n])
	p.waiting = true
	return true
}

func (p *pair) fromUpstream() bool {
	m, ok := readSome(p.u, p.out[p.un:])
	if !ok || !p.waiting && p.un+m > 0 {
		return false // closed, or bytes nobody asked for
	}
	p.un += m
	end := responseEnd(p.out[:p.un])
	switch {
	case end == 0:
		return true
	case end < 0 || end != p.un || !writeAll(p.c, p.out[:end]):
		return false
	}
	p.un, p.waiting = 0, false
	return p.next()
}
