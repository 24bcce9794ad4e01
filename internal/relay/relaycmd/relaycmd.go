// Package relaycmd is the relay command: `fogmesh relay` and the lean
// fogmesh-relay binary run the same Run. It imports the relay, the PKI and
// the command plumbing (internal/cli/base) only: never the agent, the
// control plane or their dependencies.
package relaycmd

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/fogmesh/fogmesh/internal/cli/base"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/netseam"
	"github.com/fogmesh/fogmesh/internal/relay"
)

// relayFile is the relay's config file; see relay.Config for the limits.
type relayFile struct {
	Addr               string        `json:"addr,omitempty"`
	UDPAddr            string        `json:"udpAddr,omitempty"`
	AdminAddr          string        `json:"adminAddr,omitempty"`
	CertFile           string        `json:"certFile,omitempty"`
	KeyFile            string        `json:"keyFile,omitempty"`
	BundleFile         string        `json:"bundleFile,omitempty"`
	DenyFile           string        `json:"denyFile,omitempty"`
	Control            []string      `json:"control,omitempty"`
	StateDir           string        `json:"stateDir,omitempty"`
	Name               string        `json:"name,omitempty"`
	ReloadInterval     base.Duration `json:"reloadInterval,omitempty"`
	MaxSessionsPerNode int           `json:"maxSessionsPerNode,omitempty"`
	MaxSessionsPerPair int           `json:"maxSessionsPerPair,omitempty"`
	BytesPerSecond     int64         `json:"bytesPerSecond,omitempty"`
	IdleTimeout        base.Duration `json:"idleTimeout,omitempty"`
	// MaxHandshakes and MaxHandshakesPerSource: see relay.Config.
	MaxHandshakes          int `json:"maxHandshakes,omitempty"`
	MaxHandshakesPerSource int `json:"maxHandshakesPerSource,omitempty"`
	// ControlHandshakeTimeout: see relay.MemberConfig (with control only).
	ControlHandshakeTimeout base.Duration `json:"controlHandshakeTimeout,omitempty"`
}

// checkDurations refuses a negative duration, naming its field: 0 (unset)
// is the default, and a negative one means nothing (before, a negative
// reloadInterval fell back to the default without a word).
func (fc *relayFile) checkDurations() error {
	if fc.ReloadInterval < 0 {
		return fmt.Errorf("relay: reloadInterval %s is negative (0 or unset: the default, 5s)", time.Duration(fc.ReloadInterval))
	}
	if fc.IdleTimeout < 0 {
		return fmt.Errorf("relay: idleTimeout %s is negative (0 or unset: the default, 2m)", time.Duration(fc.IdleTimeout))
	}
	if fc.ControlHandshakeTimeout < 0 {
		return fmt.Errorf("relay: controlHandshakeTimeout %s is negative (0 or unset: the default, 10s)", time.Duration(fc.ControlHandshakeTimeout))
	}
	return nil
}

// Run runs the relay with the command line args until SIGINT or SIGTERM.
// prog names the command in flag errors and the first log line. Errors
// that are the caller's (flags, config, refused joins) are
// *base.UsageError: exit code 2.
func Run(prog string, args []string) error {
	fs := flag.NewFlagSet(prog, flag.ContinueOnError)
	var (
		configPath = fs.String("config", "", "config file (YAML or JSON)")
		addr       = fs.String("addr", "", "TCP address agents connect to, mutual TLS (default 0.0.0.0:7074)")
		udpAddr    = fs.String("udp-addr", "", "UDP address of reflexive-address answers (default: -addr's; \"off\" to disable)")
		adminAddr  = fs.String("admin-addr", "", "/healthz and /metrics address (default 127.0.0.1:7075)")
		cert       = fs.String("cert", "", "the relay's certificate chain from the mesh CA (PEM, leaf first)")
		key        = fs.String("key", "", "its private key (PEM)")
		bundle     = fs.String("bundle", "", "the mesh CA's roots agents' certificates chain to (PEM)")
		deny       = fs.String("deny-file", "", "revoked node IDs: one SPIFFE ID per line, or an agent's trust.json")
		control    = fs.String("control", "", "control plane sync addresses, comma separated: the relay joins the mesh and follows renewals and revocations through it (instead of -cert/-key/-bundle/-deny-file)")
		stateDir   = fs.String("state-dir", "", "with -control: where the relay keeps its key, certificate and trust (default /var/lib/fogmesh-relay)")
		name       = fs.String("name", "", "with -control: the relay's name, its identity spiffe://<td>/relay/<name> (default: the hostname)")
		ctlHsTime  = fs.Duration("control-handshake-timeout", 0, "with -control: give up a join attempt or a dial of the control plane whose TLS handshake takes longer, or a stream whose first trust document takes longer after it (default 10s; raise it, with the control plane's -sync-handshake-timeout, for slow links)")
		joinToken  = fs.String("join-token", os.Getenv("FOGMESH_JOIN_TOKEN"), "with -control: a relay token from 'fogmesh token create -kind relay' ($FOGMESH_JOIN_TOKEN); needed once, when the state dir holds no certificate")
		reload     = fs.Duration("reload-interval", 0, "how often the certificate, bundle and deny files are checked for changes (default 5s)")
		maxSess    = fs.Int("max-sessions-per-node", 0, "relayed sessions one node may take part in (default 64)")
		maxPair    = fs.Int("max-sessions-per-pair", 0, "relayed sessions one node may dial to one other node (default 16), so one node cannot take all of another's slots")
		bps        = fs.Int64("bytes-per-second", 0, "bytes per second one node may send through the relay (default 64 MiB; -1 unlimited)")
		idle       = fs.Duration("idle-timeout", 0, "close a relayed session after this long without a byte (default 2m)")
		maxHs      = fs.Int("max-handshakes", 0, "TLS handshakes in progress at once (default 1024; -1 unbounded); more connections are closed at once as busy")
		maxHsSrc   = fs.Int("max-handshakes-per-source", 0, "TLS handshakes in progress at once from one IP address (default 256; -1 unbounded); more are closed at once as source_busy")
		addrFile   = fs.String("addr-file", "", "write the bound addresses (relay, udp, admin) as JSON to this file once listening; with port 0 in an address, this is how to learn the port")
		logf       base.LogFlags
	)
	logf.Register(fs)
	if err := fs.Parse(args); err != nil {
		return &base.UsageError{Err: err}
	}
	if fs.NArg() > 0 {
		return base.Usagef("relay: unexpected argument %q", fs.Arg(0))
	}
	var fc relayFile
	if *configPath != "" {
		if err := base.LoadConfigFile(*configPath, &fc); err != nil {
			return err
		}
	}
	set := base.FlagsSet(fs)
	str := func(name string, dst *string, v string) {
		if set[name] {
			*dst = v
		}
	}
	str("addr", &fc.Addr, *addr)
	str("udp-addr", &fc.UDPAddr, *udpAddr)
	str("admin-addr", &fc.AdminAddr, *adminAddr)
	str("cert", &fc.CertFile, *cert)
	str("key", &fc.KeyFile, *key)
	str("bundle", &fc.BundleFile, *bundle)
	str("deny-file", &fc.DenyFile, *deny)
	str("state-dir", &fc.StateDir, *stateDir)
	str("name", &fc.Name, *name)
	if set["control-handshake-timeout"] {
		fc.ControlHandshakeTimeout = base.Duration(*ctlHsTime)
	}
	if set["control"] {
		fc.Control = nil
		for _, a := range strings.Split(*control, ",") {
			if a = strings.TrimSpace(a); a != "" {
				fc.Control = append(fc.Control, a)
			}
		}
	}
	member := len(fc.Control) > 0
	if member && (fc.CertFile != "" || fc.KeyFile != "" || fc.BundleFile != "" || fc.DenyFile != "") {
		return base.Usagef("relay: -control (the relay joins the mesh) and -cert/-key/-bundle/-deny-file (the relay runs from files) do not go together")
	}
	if !member && (fc.StateDir != "" || fc.Name != "" || set["join-token"] || set["control-handshake-timeout"] || fc.ControlHandshakeTimeout != 0) {
		return base.Usagef("relay: -state-dir, -name, -join-token and -control-handshake-timeout need -control")
	}
	if set["reload-interval"] {
		fc.ReloadInterval = base.Duration(*reload)
	}
	if set["max-sessions-per-node"] {
		fc.MaxSessionsPerNode = *maxSess
	}
	if set["max-sessions-per-pair"] {
		fc.MaxSessionsPerPair = *maxPair
	}
	if set["bytes-per-second"] {
		fc.BytesPerSecond = *bps
	}
	if set["idle-timeout"] {
		fc.IdleTimeout = base.Duration(*idle)
	}
	if set["max-handshakes"] {
		fc.MaxHandshakes = *maxHs
	}
	if set["max-handshakes-per-source"] {
		fc.MaxHandshakesPerSource = *maxHsSrc
	}
	if err := fc.checkDurations(); err != nil {
		return &base.UsageError{Err: err}
	}
	if fc.Addr == "" {
		fc.Addr = "0.0.0.0:7074"
	}
	if fc.AdminAddr == "" {
		fc.AdminAddr = "127.0.0.1:7075"
	}
	if fc.ReloadInterval <= 0 {
		fc.ReloadInterval = base.Duration(5 * time.Second)
	}
	log, err := logf.Logger(os.Stderr)
	if err != nil {
		return err
	}
	ctx, stop := base.SignalContext()
	defer stop()
	ms := metrics.NewSet()
	files := relay.Files{CertFile: fc.CertFile, KeyFile: fc.KeyFile, BundleFile: fc.BundleFile, DenyFile: fc.DenyFile}
	var src *identity.Source
	var mem *relay.Member
	if member {
		if fc.StateDir == "" {
			fc.StateDir = "/var/lib/fogmesh-relay"
		}
		mem, err = relay.OpenMember(ctx, relay.MemberConfig{StateDir: fc.StateDir, Control: fc.Control, Name: fc.Name,
			JoinToken: *joinToken, ControlHandshakeTimeout: time.Duration(fc.ControlHandshakeTimeout), Logger: log, Metrics: ms})
		var ce *relay.ConfigError
		if errors.As(err, &ce) {
			return &base.UsageError{Err: err}
		}
		if err != nil {
			return err
		}
		src = mem.Source()
	} else {
		src = identity.NewSource()
		denied, err := files.Load(src)
		if err != nil {
			return &base.UsageError{Err: err}
		}
		src.SetDenied(denied)
	}
	srv, err := relay.New(relay.Config{Source: src, Logger: log, Metrics: ms,
		MaxSessionsPerNode: fc.MaxSessionsPerNode, MaxSessionsPerPair: fc.MaxSessionsPerPair, BytesPerSecond: fc.BytesPerSecond, IdleTimeout: time.Duration(fc.IdleTimeout),
		MaxHandshakes: fc.MaxHandshakes, MaxHandshakesPerSource: fc.MaxHandshakesPerSource})
	if err != nil {
		return &base.UsageError{Err: err}
	}
	defer srv.Close()

	var ln net.Listener
	var pc net.PacketConn
	switch fc.UDPAddr {
	case "":
		// The same port number as TCP (with port 0, one free for both).
		var upc *net.UDPConn
		if upc, ln, err = netseam.ListenTwin(fc.Addr); err != nil {
			return fmt.Errorf("relay: %w", err)
		}
		pc = upc
	default:
		if ln, err = net.Listen("tcp", fc.Addr); err != nil {
			return fmt.Errorf("relay: %w", err)
		}
		if fc.UDPAddr != "off" {
			if pc, err = net.ListenPacket("udp", fc.UDPAddr); err != nil {
				ln.Close()
				return fmt.Errorf("relay: udp: %w", err)
			}
		}
	}
	aln, err := net.Listen("tcp", fc.AdminAddr)
	if err != nil {
		ln.Close()
		if pc != nil {
			pc.Close()
		}
		return fmt.Errorf("relay: admin: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		ms.WritePrometheus(w)
		metrics.WriteProcessMetrics(w)
	})
	admin := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}

	errc := make(chan error, 3)
	go func() { errc <- srv.Serve(ln) }()
	if pc != nil {
		go func() { errc <- srv.ServeUDP(pc) }()
	}
	go func() {
		if err := admin.Serve(aln); !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("relay: admin: %w", err)
		}
	}()
	wctx, wcancel := context.WithCancel(ctx)
	wdone := make(chan struct{})
	go func() {
		defer close(wdone)
		if mem != nil {
			mem.Run(wctx, srv.SetDenied)
		} else {
			srv.WatchFiles(wctx, files, time.Duration(fc.ReloadInterval))
		}
	}()
	defer func() { wcancel(); <-wdone }()

	addrs := map[string]string{"relay": ln.Addr().String(), "admin": aln.Addr().String()}
	udpShown := "off"
	if pc != nil {
		addrs["udp"] = pc.LocalAddr().String()
		udpShown = addrs["udp"]
	}
	fmt.Fprintf(os.Stderr, "%s %s: relay %s (mTLS), udp %s, admin http://%s\n",
		prog, src.SVID().ID, addrs["relay"], udpShown, addrs["admin"])
	if err := base.WriteAddrFile(*addrFile, addrs); err != nil {
		admin.Close()
		return err
	}
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	admin.Shutdown(shutCtx)
	srv.Close() // closes the listeners and every connection, waits for them
	return runErr
}
