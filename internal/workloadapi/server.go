// Package workloadapi serves the SPIFFE Workload API (X.509 part) on a local
// Unix socket, so SPIFFE-aware workloads (go-spiffe, java-spiffe,
// py-spiffe, Envoy's SDS through a SPIFFE helper) fetch their X.509-SVIDs and
// trust bundles from the node's agent and get new ones pushed as they
// rotate.
//
// The Workload API is gRPC. The agent does not link google.golang.org/grpc
// (it would add about 6 MB to a binary meant for small boards); the API's
// five messages are small and fixed, so this package speaks gRPC's framing
// over the standard library's HTTP/2 server (prior-knowledge h2c on the Unix
// socket, as every gRPC client does for unix:// targets) and encodes the
// messages with protowire. Tests check it against go-spiffe's own client.
//
// Which identities a caller gets is the Source's decision; the server only
// tells it who is calling (the peer's pid, uid and gid from SO_PEERCRED).
package workloadapi

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Caller is the process on the other end of the socket.
type Caller struct {
	// PID, UID and GID are as the agent's namespaces number them. A uid
	// or gid the agent's user namespace does not map (a caller in
	// another one) is the overflow id (65534, see Overflow): it names no
	// one, and HasUID or HasGID is false.
	PID, UID, GID int32
	// Exe is the caller's executable (/proc/<pid>/exe) read when its
	// connection is accepted (not when it connected: a process that execs
	// between its connect and the agent's accept is read after the exec);
	// "" if unreadable, if the connecting process is gone, or if the agent
	// cannot see it: PID 0 (the caller is outside the agent's pid
	// namespace) or a /proc of another pid namespace than the agent's. A
	// path selector then fails; uid and gid (SO_PEERCRED) still count.
	Exe string
	// Known is false when the peer's credentials could not be read (not a
	// Unix socket); a Source should then hand out nothing.
	Known bool
}

// SVID is one X.509 identity with its private key.
type SVID struct {
	ID    string              // spiffe://trust-domain/path
	Chain []*x509.Certificate // leaf first
	Key   crypto.Signer       // must be marshalable as PKCS#8
	Hint  string              // optional
}

// Source provides what the server hands out. Its methods must be safe for
// concurrent use and must not block.
type Source interface {
	// SVIDs are the caller's identities; none means the caller has no
	// identity here (it gets PERMISSION_DENIED, as from SPIRE).
	SVIDs(Caller) []SVID
	// Bundles are the trust bundles by trust domain name (e.g.
	// "fogmesh.local"), the caller's own domain included.
	Bundles() map[string][]*x509.Certificate
	// TrustDomain is the name of the agent's own trust domain.
	TrustDomain() string
	// Changed returns a channel that is closed at the next change of
	// SVIDs or bundles.
	Changed() <-chan struct{}
}

// gRPC status codes used here.
const (
	codeOK               = 0
	codeInvalidArgument  = 3
	codePermissionDenied = 7
	codeUnimplemented    = 12
	codeUnavailable      = 14
)

// maxRequest bounds a request message; every Workload API request is tiny.
const maxRequest = 64 << 10

// Bounds on what one local user holds open, so no local process can grow
// the agent's memory without end: connections per uid (the one past it is
// closed at accept) and streams per connection (a SPIFFE client watches
// with one or two).
const (
	maxConnsPerUID = 128
	maxStreams     = 16
)

// Server is a Workload API server. The zero value is not usable; use New.
type Server struct {
	src  Source
	log  *slog.Logger
	http *http.Server

	// Counters, read by the agent's metrics.
	Requests atomic.Int64 // RPCs started
	Denied   atomic.Int64 // RPCs answered PERMISSION_DENIED
	Pushes   atomic.Int64 // responses sent (first answers and rotations)
}

// New returns a server for src. log may be nil.
func New(src Source, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{src: src, log: log}
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	s.http = &http.Server{
		Handler:           http.HandlerFunc(s.serveHTTP),
		Protocols:         p,
		ReadHeaderTimeout: 10 * time.Second,
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: maxStreams},
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, callerKey{}, c.(*credConn).caller)
		},
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	return s
}

type callerKey struct{}

// Serve answers connections on ln until Close. It returns nil after Close.
func (s *Server) Serve(ln net.Listener) error {
	err := s.http.Serve(&uidLimitListener{Listener: ln, open: map[int32]int{}})
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Close stops the server and ends open streams.
func (s *Server) Close() error { return s.http.Close() }

// uidLimitListener reads each connection's caller at accept and closes
// the ones past maxConnsPerUID open connections of that caller's uid.
type uidLimitListener struct {
	net.Listener
	mu   sync.Mutex    // guards the following
	open map[int32]int // uid -> open connections
}

func (l *uidLimitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		caller := peerCred(c)
		l.mu.Lock()
		if l.open[caller.UID] >= maxConnsPerUID {
			l.mu.Unlock()
			c.Close()
			continue
		}
		l.open[caller.UID]++
		l.mu.Unlock()
		return &credConn{Conn: c, caller: caller, l: l}, nil
	}
}

// credConn is an accepted connection with its caller; Close gives its
// place back.
type credConn struct {
	net.Conn
	caller Caller
	l      *uidLimitListener
	once   sync.Once
}

func (c *credConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		if c.l.open[c.caller.UID]--; c.l.open[c.caller.UID] == 0 {
			delete(c.l.open, c.caller.UID)
		}
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}

func peerCred(c net.Conn) Caller {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return Caller{}
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return Caller{}
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || cerr != nil {
		return Caller{}
	}
	// The pid is the connecting process's, but that process may have
	// exited since and its pid gone to another: read the executable only
	// while a pidfd of the connecting process (SO_PEERPIDFD, Linux 6.5+)
	// shows it alive. Older kernels: read by pid alone. callerExe also
	// makes sure /proc shows that process at all (callerproc.go).
	pidfd, perr := -1, error(nil)
	raw.Control(func(fd uintptr) { pidfd, perr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, soPeerPIDFD) })
	if perr == nil {
		defer unix.Close(pidfd)
	} else {
		pidfd = -1
	}
	exe := callerExe("/proc", os.Getpid(), cred.Pid, pidfd)
	if perr == nil && unix.PidfdSendSignal(pidfd, 0, nil, 0) != nil || perr != nil && !errors.Is(perr, unix.ENOPROTOOPT) {
		exe = "" // the connecting process is gone: its pid names another
	}
	return Caller{PID: cred.Pid, UID: int32(cred.Uid), GID: int32(cred.Gid), Exe: exe, Known: true}
}

// soPeerPIDFD is SO_PEERPIDFD (asm-generic; golang.org/x/sys lacks it).
const soPeerPIDFD = 77

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor != 2 || r.Method != http.MethodPost {
		http.Error(w, "the SPIFFE Workload API is gRPC (HTTP/2 POST)", http.StatusBadRequest)
		return
	}
	s.Requests.Add(1)
	w.Header().Set("Content-Type", "application/grpc")
	if r.Header.Get("Workload.Spiffe.Io") != "true" {
		s.status(w, codeInvalidArgument, "security header missing from request")
		return
	}
	if _, err := readMessage(r.Body); err != nil {
		s.status(w, codeInvalidArgument, "bad request message: "+err.Error())
		return
	}
	caller, _ := r.Context().Value(callerKey{}).(Caller)
	switch r.URL.Path {
	case "/SpiffeWorkloadAPI/FetchX509SVID":
		s.stream(w, r, func() ([]byte, bool) {
			svids := s.src.SVIDs(caller)
			if len(svids) == 0 {
				return nil, false
			}
			b, err := s.x509SVIDResponse(svids)
			if err != nil {
				s.log.Error("workloadapi: encode SVIDs", "err", err)
				return nil, false
			}
			return b, true
		}, caller)
	case "/SpiffeWorkloadAPI/FetchX509Bundles":
		s.stream(w, r, func() ([]byte, bool) {
			if len(s.src.SVIDs(caller)) == 0 {
				return nil, false
			}
			return x509BundlesResponse(s.src.Bundles()), true
		}, caller)
	case "/SpiffeWorkloadAPI/FetchJWTSVID", "/SpiffeWorkloadAPI/FetchJWTBundles",
		"/SpiffeWorkloadAPI/ValidateJWTSVID", "/SpiffeWorkloadAPI/FetchWITSVID", "/SpiffeWorkloadAPI/FetchWITBundles":
		s.status(w, codeUnimplemented, "fogmesh serves X.509-SVIDs only")
	default:
		s.status(w, codeUnimplemented, "unknown method "+r.URL.Path)
	}
}

// stream sends next()'s message now and again at every change of the
// source, until the client goes away. A caller with nothing to receive gets
// PERMISSION_DENIED, at once or when its identities go away.
func (s *Server) stream(w http.ResponseWriter, r *http.Request, next func() ([]byte, bool), caller Caller) {
	w.Header().Set("Trailer", "Grpc-Status, Grpc-Message")
	started := false
	for {
		changed := s.src.Changed() // before reading, so no change is missed
		msg, ok := next()
		if !ok {
			s.Denied.Add(1)
			s.log.Info("workloadapi: no identity for caller", "pid", caller.PID, "uid", caller.UID, "gid", caller.GID,
				"ids_unmapped", !caller.HasUID() || !caller.HasGID(), "path", r.URL.Path)
			if !started {
				w.Header().Del("Trailer")
			}
			s.status(w, codePermissionDenied, "no identity issued")
			return
		}
		if err := writeMessage(w, msg); err != nil {
			return
		}
		started = true
		s.Pushes.Add(1)
		select {
		case <-r.Context().Done():
			w.Header().Set("Grpc-Status", strconv.Itoa(codeOK))
			return
		case <-changed:
		}
	}
}

// status ends the call with a gRPC status: trailers-only when nothing was
// written yet, trailers otherwise.
func (s *Server) status(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Grpc-Status", strconv.Itoa(code))
	w.Header().Set("Grpc-Message", msg)
	w.WriteHeader(http.StatusOK)
}

func readMessage(r io.Reader) ([]byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, fmt.Errorf("message prefix: %w", err)
	}
	if hdr[0] != 0 {
		return nil, errors.New("compressed messages are not supported")
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > maxRequest {
		return nil, fmt.Errorf("message of %d bytes, max %d", n, maxRequest)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, fmt.Errorf("message body: %w", err)
	}
	return b, nil
}

func writeMessage(w http.ResponseWriter, msg []byte) error {
	buf := make([]byte, 5, 5+len(msg))
	binary.BigEndian.PutUint32(buf[1:], uint32(len(msg)))
	if _, err := w.Write(append(buf, msg...)); err != nil {
		return err
	}
	return http.NewResponseController(w).Flush()
}
