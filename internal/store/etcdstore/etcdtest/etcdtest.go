// Package etcdtest starts real etcd processes (Debian's etcd-server, found
// on PATH) for tests. Members listen on unix sockets in a private
// directory, for clients and peers alike, so no TCP port is ever chosen;
// etcd takes the socket name from the URL's host:port, relative to its
// working directory, which is why every member runs in that directory.
package etcdtest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Cluster is a set of etcd members started by a test.
type Cluster struct {
	t    testing.TB
	dir  string
	n    int
	o    Options
	cmds []*exec.Cmd
	done []chan struct{}
}

// Options change how the members run; the zero value is plaintext.
type Options struct {
	// TLS, if set, serves clients with TLS (unixs:// endpoints) and
	// requires a client certificate signed by TLS.CA (etcd's
	// --client-cert-auth). The test's own clients use TLS.ClientCert.
	TLS *Certs
	// Args are more flags for every member (e.g. --quota-backend-bytes).
	Args []string
	// NoStart leaves the members stopped: the test starts them with
	// Restart and waits with WaitHealthy.
	NoStart bool
}

// Start starts an n-member cluster and waits until it has a leader. It
// skips the test if etcd is not installed (scripts/install-deps.sh test
// installs it).
func Start(t testing.TB, n int) *Cluster { t.Helper(); return StartWith(t, n, Options{}) }

// StartWith is Start with options.
func StartWith(t testing.TB, n int, o Options) *Cluster {
	t.Helper()
	if _, err := exec.LookPath("etcd"); err != nil {
		t.Skip("etcd is not installed (apt-get install etcd-server, or scripts/install-deps.sh test)")
	}
	// A short path: a unix socket path must fit in 108 bytes.
	dir, err := os.MkdirTemp("", "etcd")
	if err != nil {
		t.Fatal(err)
	}
	c := &Cluster{t: t, dir: dir, n: n, o: o, cmds: make([]*exec.Cmd, n), done: make([]chan struct{}, n)}
	t.Cleanup(func() {
		for i := range c.cmds {
			c.Kill(i)
		}
		if t.Failed() {
			for i := range n {
				b, _ := os.ReadFile(filepath.Join(dir, fmt.Sprintf("m%d.log", i)))
				if len(b) > 4000 {
					b = b[len(b)-4000:]
				}
				t.Logf("etcd member %d log tail:\n%s", i, b)
			}
		}
		if os.Getenv("ETCDTEST_KEEP") == "" {
			os.RemoveAll(dir)
		}
	})
	if o.NoStart {
		return c
	}
	for i := range n {
		c.Restart(i)
	}
	c.WaitHealthy(30 * time.Second)
	return c
}

func (c *Cluster) scheme() string {
	if c.o.TLS != nil {
		return "unixs"
	}
	return "unix"
}

func (c *Cluster) clientURL(i int) string {
	return fmt.Sprintf("%s://localhost:%d", c.scheme(), 1001+i)
}
func peerURL(i int) string { return fmt.Sprintf("unix://localhost:%d", 2001+i) }

// Endpoints are the members' client URLs for clientv3 (absolute paths).
func (c *Cluster) Endpoints() []string {
	out := make([]string, c.n)
	for i := range c.n {
		out[i] = c.Endpoint(i)
	}
	return out
}

// Endpoint is member i's client URL.
func (c *Cluster) Endpoint(i int) string {
	return fmt.Sprintf("%s://%s/localhost:%d", c.scheme(), c.dir, 1001+i)
}

// Restart starts member i (again, on its data dir, if it ran before).
func (c *Cluster) Restart(i int) {
	c.t.Helper()
	var initial []string
	for j := range c.n {
		initial = append(initial, fmt.Sprintf("m%d=%s", j, peerURL(j)))
	}
	// Short raft timings: a new leader within about a second of a kill.
	args := []string{"--name", fmt.Sprintf("m%d", i), "--data-dir", fmt.Sprintf("m%d.data", i),
		"--listen-client-urls", c.clientURL(i), "--advertise-client-urls", c.clientURL(i),
		"--listen-peer-urls", peerURL(i), "--initial-advertise-peer-urls", peerURL(i),
		"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", "new",
		"--initial-cluster-token", "fogmesh-test", "--heartbeat-interval", "50", "--election-timeout", "500",
		"--logger", "zap", "--log-outputs", "stderr"}
	if ct := c.o.TLS; ct != nil {
		args = append(args, "--cert-file", ct.ServerCert, "--key-file", ct.ServerKey,
			"--trusted-ca-file", ct.CA, "--client-cert-auth")
	}
	args = append(args, c.o.Args...)
	cmd := exec.Command("etcd", args...)
	cmd.Dir = c.dir
	// If the test binary dies (a timeout panic skips cleanups), so does etcd.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// A killed member leaves its sockets behind; binding them again fails.
	for _, u := range []string{c.clientURL(i), peerURL(i)} {
		_, name, _ := strings.Cut(u, "://")
		os.Remove(filepath.Join(c.dir, name))
	}
	log, err := os.OpenFile(filepath.Join(c.dir, fmt.Sprintf("m%d.log", i)), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		c.t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		log.Close()
		c.t.Fatalf("start etcd member %d: %v", i, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); log.Close(); close(done) }()
	c.cmds[i], c.done[i] = cmd, done
}

// Kill stops member i with SIGKILL and waits for it to exit.
func (c *Cluster) Kill(i int) {
	if c.cmds[i] == nil {
		return
	}
	c.cmds[i].Process.Signal(syscall.SIGKILL)
	<-c.done[i]
	c.cmds[i] = nil
}

// Client returns a client of every member, closed at cleanup.
func (c *Cluster) Client() *clientv3.Client {
	c.t.Helper()
	cli, err := clientv3.New(c.config(c.Endpoints(), 2*time.Second))
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { cli.Close() })
	return cli
}

// config is a client configuration for eps: TLS with the client
// certificate when the cluster has TLS.
func (c *Cluster) config(eps []string, dial time.Duration) clientv3.Config {
	cfg := clientv3.Config{Endpoints: eps, DialTimeout: dial, Logger: zap.NewNop()}
	if c.o.TLS != nil {
		cfg.TLS = c.o.TLS.ClientTLS(c.t)
	}
	return cfg
}

// Leader returns the index of the member that is raft leader now, -1 if
// none is known.
func (c *Cluster) Leader() int {
	for i := range c.n {
		if c.cmds[i] == nil {
			continue
		}
		cli, err := clientv3.New(c.config([]string{c.Endpoint(i)}, time.Second))
		if err != nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		st, err := cli.Status(ctx, c.Endpoint(i))
		cancel()
		cli.Close()
		if err == nil && st.Leader != 0 && st.Leader == st.Header.MemberId {
			return i
		}
	}
	return -1
}

// WaitHealthy waits until a linearizable read through any member succeeds.
func (c *Cluster) WaitHealthy(d time.Duration) {
	c.t.Helper()
	c.waitRead(c.Endpoints(), d)
}

// WaitMember waits until member i itself answers a linearizable read: a
// restarted member serves nothing until it has rejoined the cluster.
func (c *Cluster) WaitMember(i int, d time.Duration) {
	c.t.Helper()
	c.waitRead([]string{c.Endpoint(i)}, d)
}

func (c *Cluster) waitRead(eps []string, d time.Duration) {
	c.t.Helper()
	cli, err := clientv3.New(c.config(eps, time.Second))
	if err != nil {
		c.t.Fatal(err)
	}
	defer cli.Close()
	deadline := time.Now().Add(d)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cli.Get(ctx, "health")
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("etcd cluster not healthy after %v: %v", d, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// EnableAuth turns on etcd's authentication: user, with password, may read
// and write keys under prefix only; root (the test's own clients, by the
// common name of their certificate) may do anything. The cluster needs TLS
// with a client certificate named root.
func (c *Cluster) EnableAuth(user, password, prefix string) {
	c.t.Helper()
	if c.o.TLS == nil || c.o.TLS.ClientName != "root" {
		c.t.Fatal("etcdtest: EnableAuth needs TLS certificates for root")
	}
	cli := c.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	steps := []func() error{
		func() error { _, err := cli.UserAdd(ctx, "root", "root-"+password); return err },
		func() error { _, err := cli.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := cli.RoleAdd(ctx, user); return err },
		func() error {
			_, err := cli.RoleGrantPermission(ctx, user, prefix, clientv3.GetPrefixRangeEnd(prefix), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := cli.UserAdd(ctx, user, password); return err },
		func() error { _, err := cli.UserGrantRole(ctx, user, user); return err },
		func() error { _, err := cli.AuthEnable(ctx); return err },
	}
	for i, f := range steps {
		if err := f(); err != nil {
			c.t.Fatalf("etcdtest: enable auth, step %d: %v", i, err)
		}
	}
}

// Dir is the members' working directory (their sockets are in it).
func (c *Cluster) Dir() string { return c.dir }
