package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/netlab"
	"github.com/fogmesh/fogmesh/internal/relay"
)

// path opens mesh streams to the serving node's workloads ("echo",
// "sink") over one carrier.
type path struct {
	name string
	desc string
	dial func(ctx context.Context, service string) (net.Conn, error)
}

// bench is everything set up once: the lab's relay process, the nodes and
// the four paths. close undoes it (the lab itself is closed by run).
type bench struct {
	lab       *netlab.Lab
	relayCmd  *exec.Cmd
	relayPID  int
	relayLog  string
	relayAddr string
	adminAddr string
	paths     []*path
	punchInfo string
	udpInfo   string
	// udpDropped reports the datagrams each channel side's receive
	// queue dropped (read after the run).
	udpDropped func() string
	c1, a1hold *node
	holdLimit  int

	mu      sync.Mutex
	closers []func()
	// holdIn receives c1's side of the sessions the hold node dials.
	holdIn chan net.Conn
}

func (b *bench) onClose(f func()) {
	b.mu.Lock()
	b.closers = append(b.closers, f)
	b.mu.Unlock()
}

// close runs the closers last first, then stops the relay process.
func (b *bench) close() {
	b.mu.Lock()
	cs := b.closers
	b.closers = nil
	b.mu.Unlock()
	for i := len(cs) - 1; i >= 0; i-- {
		cs[i]()
	}
}

// node is one mesh node of the lab: an identity issued by the bench's CA
// and, when it uses the relay, its control connection.
type node struct {
	host *netlab.Host
	name string
	src  *identity.Source
	id   spiffeid.ID
	rc   *relay.Client
}

func newNode(ca *identity.CA, h *netlab.Host, site, name string) (*node, error) {
	src, err := ca.NodeSource(site, name)
	if err != nil {
		return nil, err
	}
	return &node{host: h, name: name, src: src, id: src.SVID().ID}, nil
}

// setup starts the relay process and the four paths.
func setup(ctx context.Context, lab *netlab.Lab, bin, tmp string) (*bench, error) {
	b := &bench{lab: lab, holdIn: make(chan net.Conn, 64)}
	ca, err := identity.OpenCA(identity.CAConfig{Dir: filepath.Join(tmp, "ca")})
	if err != nil {
		return b, fmt.Errorf("CA: %w", err)
	}
	if err := b.startRelay(ctx, ca, bin, tmp); err != nil {
		return b, err
	}
	mk := func(h *netlab.Host, site, name string) *node {
		if err != nil {
			return nil
		}
		var n *node
		n, err = newNode(ca, h, site, name)
		return n
	}
	l1 := mk(lab.LAN.Nodes[0], "lan", "l1")
	l2 := mk(lab.LAN.Nodes[1], "lan", "l2")
	a1 := mk(lab.A.Nodes[0], "a", "a1")
	c1 := mk(lab.C.Nodes[0], "c", "c1")
	b1 := mk(lab.B.Nodes[0], "b", "b1")
	a1hold := mk(lab.A.Nodes[0], "a", "a1-hold")
	if err != nil {
		return b, fmt.Errorf("identities: %w", err)
	}
	b.c1, b.a1hold = c1, a1hold
	for _, n := range []*node{l1, a1, c1, a1hold, b1} {
		if err := b.connectRelay(ctx, ca, n); err != nil {
			return b, err
		}
	}
	if err := b.direct(ctx, l1, l2); err != nil {
		return b, fmt.Errorf("direct path: %w", err)
	}
	if err := b.punched(ctx, l1, a1); err != nil {
		return b, fmt.Errorf("punched path: %w", err)
	}
	if err := b.relayed(ctx, a1, c1); err != nil {
		return b, fmt.Errorf("relayed path: %w", err)
	}
	if err := b.relayedUDP(ctx, a1, b1); err != nil {
		return b, fmt.Errorf("relayed-udp path: %w", err)
	}
	return b, nil
}

// startRelay runs `fogmesh relay` inside relay 1's namespace and waits for
// its address file.
func (b *bench) startRelay(ctx context.Context, ca *identity.CA, bin, tmp string) error {
	r, err := newNode(ca, b.lab.Relay1, "relay", "r1")
	if err != nil {
		return err
	}
	keyPEM, err := identity.EncodeKeyPEM(r.src.SVID().PrivateKey)
	if err != nil {
		return err
	}
	files := map[string][]byte{
		"cert.pem":   identity.EncodeCertificatesPEM(r.src.SVID().Certificates...),
		"key.pem":    keyPEM,
		"bundle.pem": identity.EncodeCertificatesPEM(ca.Roots()...),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(tmp, name), data, 0o600); err != nil {
			return err
		}
	}
	addrFile := filepath.Join(tmp, "relay-addrs.json")
	b.relayLog = filepath.Join(tmp, "relay.log")
	logf, err := os.Create(b.relayLog)
	if err != nil {
		return err
	}
	b.holdLimit = 10_000
	cmd := b.lab.Relay1.Command(ctx, bin, "relay",
		"-addr", b.lab.Relay1.Addr.String()+":0", "-admin-addr", "127.0.0.1:0", "-addr-file", addrFile,
		"-cert", filepath.Join(tmp, "cert.pem"), "-key", filepath.Join(tmp, "key.pem"),
		"-bundle", filepath.Join(tmp, "bundle.pem"),
		"-bytes-per-second", "-1", "-max-sessions-per-node", strconv.Itoa(b.holdLimit),
		"-max-sessions-per-pair", strconv.Itoa(b.holdLimit),
		"-idle-timeout", "30m", "-log-level", "warn")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("relay process: %w", err)
	}
	b.relayCmd, b.relayPID = cmd, cmd.Process.Pid
	exited := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(exited) }()
	b.onClose(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		raw, err := os.ReadFile(addrFile)
		if err == nil {
			var addrs map[string]string
			if json.Unmarshal(raw, &addrs) == nil && addrs["relay"] != "" {
				b.relayAddr, b.adminAddr = addrs["relay"], addrs["admin"]
				return nil
			}
		}
		select {
		case <-exited:
			out, _ := os.ReadFile(b.relayLog)
			return fmt.Errorf("relay process exited: %s", out)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return errors.New("relay process wrote no address file in 20s")
		}
	}
}

// connectRelay opens n's control connection to the relay from n's
// namespace and keeps it alive.
func (b *bench) connectRelay(ctx context.Context, ca *identity.CA, n *node) error {
	dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	rc, err := relay.DialClientVia(dctx, b.relayAddr, n.src.ClientConfig(relay.AuthorizeRelay(ca.TrustDomain())), n.host.DialContext)
	if err != nil {
		return fmt.Errorf("%s: relay: %w", n.name, err)
	}
	n.rc = rc
	kctx, kcancel := context.WithCancel(context.Background())
	go rc.KeepAlive(kctx, 20*time.Second)
	b.onClose(func() { kcancel(); rc.Close() })
	return nil
}
