// Package kubeapi starts a real kube-apiserver, backed by Debian's etcd,
// for the tests of fogmesh's Kubernetes source: no fake clientset can
// show what a real apiserver validates, how its watches break and how it
// answers a resourceVersion that is too old.
//
// The kube-apiserver binary is built from the Go module proxy
// (tools/kube-apiserver: k8s.io/kubernetes at KubernetesVersion, its own
// module so the main module never requires k8s.io/kubernetes) into a
// cache directory, once: scripts/install-deps.sh test builds it, and a
// test that finds it missing builds it itself. A test that cannot build
// or start it fails with the reason; it never skips, so a broken set-up
// cannot hide in CI.
package kubeapi

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// KubernetesVersion is the release whose kube-apiserver the tests run;
// tools/kube-apiserver/go.mod pins the same.
const KubernetesVersion = "v1.37.2"

// BinaryEnv, if set, names a kube-apiserver binary to use instead of the
// cached build.
const BinaryEnv = "FOGMESH_KUBE_APISERVER"

// BinaryPath is where the build is cached: $FOGMESH_KUBE_APISERVER, else
// <user cache dir>/fogmesh/kube-apiserver-<version>/kube-apiserver
// ($XDG_CACHE_HOME or ~/.cache).
func BinaryPath() (string, error) {
	if p := os.Getenv(BinaryEnv); p != "" {
		return p, nil
	}
	dir, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("kube-apiserver cache: %w", err)
	}
	return filepath.Join(dir, "fogmesh", "kube-apiserver-"+KubernetesVersion, "kube-apiserver"), nil
}

// toolsDir is tools/kube-apiserver of this source tree.
func toolsDir() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("no caller information to find tools/kube-apiserver")
	}
	d := filepath.Join(filepath.Dir(file), "..", "..", "..", "tools", "kube-apiserver")
	if _, err := os.Stat(filepath.Join(d, "go.mod")); err != nil {
		return "", fmt.Errorf("tools/kube-apiserver: %w", err)
	}
	return d, nil
}

// Binary returns the kube-apiserver binary, building it first if it is
// not cached. Builds of concurrent test binaries are serialised by a lock
// file beside the binary.
func Binary() (string, error) {
	p, err := BinaryPath()
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	if os.Getenv(BinaryEnv) != "" {
		return "", fmt.Errorf("%s=%s: no such file", BinaryEnv, p)
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return "", fmt.Errorf("kube-apiserver cache: %w", err)
	}
	lock, err := os.OpenFile(p+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", fmt.Errorf("kube-apiserver build lock: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", fmt.Errorf("kube-apiserver build lock: %w", err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if _, err := os.Stat(p); err == nil { // built while we waited
		return p, nil
	}
	dir, err := toolsDir()
	if err != nil {
		return "", err
	}
	tmp := p + ".tmp"
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X k8s.io/component-base/version.gitVersion="+KubernetesVersion+
		" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37", "-o", tmp, "k8s.io/kubernetes/cmd/kube-apiserver")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build kube-apiserver %s in %s (scripts/install-deps.sh test does this before the tests): %w\n%s", KubernetesVersion, dir, err, out)
	}
	if err := os.Rename(tmp, p); err != nil {
		return "", fmt.Errorf("kube-apiserver cache: %w", err)
	}
	return p, nil
}

// Server is a running kube-apiserver with its etcd.
type Server struct {
	// URL is the apiserver's https://127.0.0.1:port.
	URL string
	// Token is a bearer token of a member of system:masters.
	Token string
	// CAFile verifies the apiserver's serving certificate.
	CAFile string
	// Kubeconfig is a kubeconfig file for URL, CAFile and Token.
	Kubeconfig string
	// Config is a client configuration for it; Client a clientset.
	Config *rest.Config
	Client *kubernetes.Clientset

	dir  string
	cmd  *exec.Cmd
	done chan struct{}
	log  string
}

// Start starts etcd and a kube-apiserver for the test, stopped at its
// cleanup, and waits until the apiserver is ready (/readyz) and its
// default namespace exists. It fails the test, with the reason and the
// logs, where it cannot.
func Start(t testing.TB) *Server {
	t.Helper()
	s, err := start(t)
	if err != nil {
		t.Fatalf("kubeapi: a real kube-apiserver is needed for this test and could not be had: %v", err)
	}
	return s
}

// Env is what Start needs of its caller: a testing.TB, or a program's
// own (a benchmark, bench/kubeload) that runs the cleanups at its end.
type Env interface {
	Cleanup(func())
	Failed() bool
	Logf(format string, args ...any)
}

// StartEnv is Start for a caller that is not a test: it returns the error
// instead of failing, and stops the processes at e's cleanup.
func StartEnv(e Env) (*Server, error) { return start(e) }

func start(t Env) (*Server, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	etcdBin, err := exec.LookPath("etcd")
	if err != nil {
		return nil, fmt.Errorf("etcd not installed (apt-get install etcd-server, or scripts/install-deps.sh test): %w", err)
	}
	// A short path: unix socket paths must fit in 108 bytes.
	dir, err := os.MkdirTemp("", "kapi")
	if err != nil {
		return nil, err
	}
	s := &Server{dir: dir, log: filepath.Join(dir, "kube-apiserver.log")}
	var procs []*exec.Cmd
	var dones []chan struct{}
	t.Cleanup(func() {
		for i := len(procs) - 1; i >= 0; i-- {
			procs[i].Process.Signal(syscall.SIGKILL)
			<-dones[i]
		}
		if t.Failed() {
			for _, f := range []string{"etcd.log", "kube-apiserver.log"} {
				b, _ := os.ReadFile(filepath.Join(dir, f))
				if len(b) > 6000 {
					b = b[len(b)-6000:]
				}
				t.Logf("kubeapi: %s tail:\n%s", f, b)
			}
		}
		os.RemoveAll(dir)
	})
	run := func(name string, args []string, logName string) (*exec.Cmd, chan struct{}, error) {
		cmd := exec.Command(name, args...)
		cmd.Dir = dir
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		lf, err := os.OpenFile(filepath.Join(dir, logName), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return nil, nil, err
		}
		cmd.Stdout, cmd.Stderr = lf, lf
		if err := cmd.Start(); err != nil {
			lf.Close()
			return nil, nil, fmt.Errorf("start %s: %w", name, err)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); lf.Close(); close(done) }()
		procs, dones = append(procs, cmd), append(dones, done)
		return cmd, done, nil
	}
	// etcd on unix sockets in dir: no port to choose.
	etcdURL := "unix://localhost:2379"
	if _, _, err := run(etcdBin, []string{"--name", "kapi", "--data-dir", "etcd.data",
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", "unix://localhost:2380", "--initial-advertise-peer-urls", "unix://localhost:2380",
		"--initial-cluster", "kapi=unix://localhost:2380", "--logger", "zap", "--log-outputs", "stderr"}, "etcd.log"); err != nil {
		return nil, err
	}
	etcdSock := filepath.Join(dir, "localhost:2379")
	if err := waitFor(30*time.Second, func() bool { _, err := os.Stat(etcdSock); return err == nil }); err != nil {
		return nil, fmt.Errorf("etcd did not open its socket %s: %w", etcdSock, err)
	}

	// Service-account keys and the admin token, made here.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	saKey := filepath.Join(dir, "sa.key")
	if err := os.WriteFile(saKey, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return nil, err
	}
	tok := make([]byte, 16)
	rand.Read(tok)
	s.Token = hex.EncodeToString(tok)
	tokens := filepath.Join(dir, "tokens.csv")
	if err := os.WriteFile(tokens, []byte(s.Token+`,admin,admin,"system:masters"`+"\n"), 0o600); err != nil {
		return nil, err
	}
	certDir := filepath.Join(dir, "certs")
	// kube-apiserver cannot bind port 0 and tell us the port: take a
	// free one and try again if another socket took it in between.
	var done chan struct{}
	var cmd *exec.Cmd
	for attempt := 0; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		os.Truncate(s.log, 0)
		cmd, done, err = run(bin, []string{
			"--etcd-servers=unix://" + etcdSock,
			"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
			"--secure-port=" + strconv.Itoa(port), "--cert-dir=" + certDir,
			"--token-auth-file=" + tokens, "--authorization-mode=RBAC",
			"--service-account-issuer=https://kubernetes.default.svc", "--service-account-key-file=" + saKey,
			"--service-account-signing-key-file=" + saKey,
			"--service-cluster-ip-range=10.96.0.0/16", "--allow-privileged=true",
			"--enable-priority-and-fairness=false", "--profiling=false",
			"--endpoint-reconciler-type=none", "--v=1",
		}, "kube-apiserver.log")
		if err != nil {
			return nil, err
		}
		s.URL = fmt.Sprintf("https://127.0.0.1:%d", port)
		err = s.waitReady(done, 90*time.Second)
		if err == nil {
			break
		}
		b, _ := os.ReadFile(s.log)
		if attempt < 5 && strings.Contains(string(b), "address already in use") {
			procs, dones = procs[:len(procs)-1], dones[:len(dones)-1]
			continue
		}
		return nil, err
	}
	s.cmd, s.done = cmd, done
	s.CAFile = filepath.Join(certDir, "apiserver.crt")
	s.Config = &rest.Config{Host: s.URL, BearerToken: s.Token, TLSClientConfig: rest.TLSClientConfig{CAFile: s.CAFile}, QPS: 200, Burst: 400}
	s.Client, err = kubernetes.NewForConfig(s.Config)
	if err != nil {
		return nil, err
	}
	s.Kubeconfig = filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(s.Kubeconfig, []byte(s.KubeconfigFor(s.URL)), 0o600); err != nil {
		return nil, err
	}
	// The bootstrap controller creates "default"; clients expect it.
	if err := waitFor(60*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := s.Client.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{})
		return err == nil
	}); err != nil {
		return nil, fmt.Errorf("namespace default never appeared: %w", err)
	}
	return s, nil
}

// KubeconfigFor is a kubeconfig with the admin token for server, which
// is the apiserver's URL or a plain-HTTP proxy in front of it.
func (s *Server) KubeconfigFor(server string) string {
	cluster := fmt.Sprintf("    server: %s\n    certificate-authority: %s\n", server, s.CAFile)
	if strings.HasPrefix(server, "http://") {
		cluster = fmt.Sprintf("    server: %s\n", server)
	}
	return "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n" + cluster +
		"users:\n- name: admin\n  user:\n    token: " + s.Token + "\n" +
		"contexts:\n- name: test\n  context: {cluster: test, user: admin}\ncurrent-context: test\n"
}

// Stop kills the apiserver (not etcd) and waits for it to exit.
func (s *Server) Stop() {
	s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.done
}

// waitReady polls /readyz until it answers 200, the process exits, or d
// passes.
func (s *Server) waitReady(done chan struct{}, d time.Duration) error {
	cli := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} // only to poll readiness: the CA is written by the apiserver itself
	defer cli.CloseIdleConnections()
	deadline := time.Now().Add(d)
	var last string
	for {
		select {
		case <-done:
			return fmt.Errorf("kube-apiserver exited before it was ready")
		default:
		}
		req, _ := http.NewRequest("GET", s.URL+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+s.Token)
		if resp, err := cli.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kube-apiserver not ready after %v (last: %s)", d, last)
		}
		time.Sleep(100 * time.Millisecond) // poll interval
	}
}

// freePort returns a port that was free a moment ago on 127.0.0.1.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// waitFor polls cond every 50 ms for at most d.
func waitFor(d time.Duration, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v", d)
		}
		time.Sleep(50 * time.Millisecond) // poll interval
	}
	return nil
}
