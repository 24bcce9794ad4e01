package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/fogmesh/fogmesh/internal/testenv/kubeapi"
)

type config struct {
	Bin                        string
	Dir                        string
	Services, Endpoints        int
	Agents                     int
	Pods                       bool
	Changes                    int
	Rate                       float64
	ProbeEvery, ChangeTimeout  time.Duration
	CaptureRounds, CaptureReqs int
}

// The two ports every pod serves (one listener each on 0.0.0.0 of the
// namespace, which has all of 10.244.0.0/16 as local addresses): a change
// moves a Service's endpoints from one to the other, and the body says
// which one a request reached.
const portA, portB = 8001, 8002

const ns = "load"

type result struct {
	Services, Endpoints, Pods, Agents int
	Secure                            bool
	Create                            time.Duration // client-go creating every object
	FirstSync                         time.Duration // control plane start → every object in its registry
	AgentsReady                       time.Duration // → every agent resolves and routes every Service
	ControlRSS, ControlHWM            int64         // bytes, after the changes
	ControlRSSLoaded                  int64         // bytes, after the first sync
	AgentRSS                          []int64       // bytes, each agent after the changes

	Changes         int
	Rate            float64
	ProbeEvery      time.Duration
	UpdateP50       time.Duration // the apiserver's answer to an Update
	AllP50, AllP99  time.Duration // change committed → every agent routes by it
	AllMax          time.Duration
	AgentP50        []time.Duration // per agent
	AgentP99        []time.Duration
	Missed          int      // (change, agent) pairs not seen within ChangeTimeout
	Misses          []string // what each such agent answered, its route and log
	ControlSyncs    float64
	ControlSyncP50  string
	CaptureRounds   int
	CaptureReqs     int
	Capture         map[string]latency // "vip-new", "clusterip-new", "vip-keepalive", "clusterip-keepalive"
	CaptureServices int                // ClusterIP:ports the capturing agent redirects
}

type latency struct {
	P50, P99 time.Duration
	Mean     time.Duration
}

// env runs kubeapi's cleanups at the end of the run.
type env struct {
	mu       sync.Mutex
	cleanups []func()
	failed   bool
}

func (e *env) Cleanup(f func()) { e.mu.Lock(); e.cleanups = append(e.cleanups, f); e.mu.Unlock() }
func (e *env) Failed() bool     { return e.failed }
func (e *env) Logf(f string, a ...any) {
	log.Printf(f, a...)
}

func (e *env) close() {
	for i := len(e.cleanups) - 1; i >= 0; i-- {
		e.cleanups[i]()
	}
}

func run(ctx context.Context, cfg config) (res result, err error) {
	res = result{Services: cfg.Services, Endpoints: cfg.Endpoints, Agents: cfg.Agents, Secure: true, Changes: cfg.Changes, Rate: cfg.Rate,
		ProbeEvery: cfg.ProbeEvery, CaptureRounds: cfg.CaptureRounds, CaptureReqs: cfg.CaptureReqs}
	e := &env{}
	defer func() {
		e.failed = err != nil
		e.close()
	}()
	logf("starting a kube-apiserver")
	k, err := kubeapi.StartEnv(e)
	if err != nil {
		return res, err
	}
	rc := *k.Config
	rc.QPS, rc.Burst = 5000, 10000
	c, err := kubernetes.NewForConfig(&rc)
	if err != nil {
		return res, err
	}
	if err := servePods(ctx, e); err != nil {
		return res, err
	}

	// The cluster: nodes, a namespace, Services, one EndpointSlice each,
	// and the pods.
	t0 := time.Now()
	slices_, err := createObjects(ctx, c, cfg)
	if err != nil {
		return res, err
	}
	if cfg.Pods {
		res.Pods = cfg.Endpoints
	}
	res.Create = time.Since(t0)
	logf("created %d Services, %d endpoints, %d Pods in %v", cfg.Services, cfg.Endpoints, res.Pods, res.Create.Round(time.Millisecond))

	// The control plane, secure.
	state := filepath.Join(cfg.Dir, "control")
	t0 = time.Now()
	cp, ca, err := startProc(ctx, e, cfg, "control", "control", "-state-dir", state, "-admin-addr", "127.0.0.1:0", "-sync-addr", "127.0.0.1:0", "-kube", k.Kubeconfig)
	if err != nil {
		return res, err
	}
	adm, err := newAdmin(ctx, state, ca["admin"])
	if err != nil {
		return res, err
	}
	want := cfg.Services + cfg.Endpoints + 1 // and the apiserver's own Service default/kubernetes
	if err := waitFor(ctx, 10*time.Minute, fmt.Sprintf("the control plane to hold the cluster's %d objects", want), func() (bool, string) {
		var st struct {
			Objects   int
			Warnings  []string
			Conflicts []string
		}
		if err := adm.getJSON(ctx, "/v1/cluster", &st); err != nil {
			return false, err.Error()
		}
		return st.Objects == want, fmt.Sprintf("%d objects, %d warnings %.3q, %d conflicts %.3q", st.Objects, len(st.Warnings), st.Warnings, len(st.Conflicts), st.Conflicts)
	}); err != nil {
		return res, err
	}
	res.FirstSync = time.Since(t0)
	logf("control plane holds %d objects after %v", want, res.FirstSync.Round(time.Millisecond))
	if st, err := procStatus(cp.Process.Pid); err == nil {
		res.ControlRSSLoaded = st.rss
	}

	// The agents, joined with tokens; kn-0 runs the pods and captures.
	t0 = time.Now()
	agents := make([]*agent, cfg.Agents)
	for i := range agents {
		tok, err := adm.joinToken(ctx, cfg.Bin, "s1")
		if err != nil {
			return res, err
		}
		args := []string{"agent", "-name", nodeName(i), "-site", "s1", "-region", "r1", "-control", ca["sync"], "-join-token", tok,
			"-state-dir", filepath.Join(cfg.Dir, nodeName(i)), "-admin-addr", "127.0.0.1:0", "-dns-addr", "127.0.0.1:0", "-mesh-addr", "127.0.0.1:0",
			"-vip-range", fmt.Sprintf("127.%d.0.0/16", 45+i)}
		if i == 0 {
			args = append(args, "-capture", "required", "-capture-addr", "0.0.0.0:0", "-capture-addr6", "off")
		}
		p, addrs, err := startProc(ctx, e, cfg, nodeName(i), args...)
		if err != nil {
			return res, err
		}
		agents[i] = &agent{name: nodeName(i), p: p, addrs: addrs, vip: make([]string, cfg.Services),
			cli: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64, MaxIdleConns: 4096}}}
	}
	for _, a := range agents {
		if err := a.resolveAll(ctx, cfg.Services); err != nil {
			return res, err
		}
		last := cfg.Services - 1
		if err := waitFor(ctx, 2*time.Minute, a.name+" to route svc-"+strconv.Itoa(last), func() (bool, string) {
			got, err := a.get(ctx, last)
			return got == strconv.Itoa(portA), fmt.Sprint(got, err)
		}); err != nil {
			return res, err
		}
	}
	res.AgentsReady = time.Since(t0)
	logf("%d agents resolve and route all %d Services after %v", cfg.Agents, cfg.Services, res.AgentsReady.Round(time.Millisecond))

	if err := measureChanges(ctx, c, cfg, slices_, agents, &res); err != nil {
		return res, err
	}
	if m, err := adm.metrics(ctx); err == nil {
		res.ControlSyncs = m["fogmesh_kube_syncs_total"]
	}
	if st, err := procStatus(cp.Process.Pid); err == nil {
		res.ControlRSS, res.ControlHWM = st.rss, st.hwm
	}
	for _, a := range agents {
		st, _ := procStatus(a.p.Process.Pid)
		res.AgentRSS = append(res.AgentRSS, st.rss)
	}
	if cfg.CaptureRounds > 0 {
		if err := measureCapture(ctx, c, cfg, agents[0], &res); err != nil {
			return res, err
		}
	}
	return res, nil
}

func logf(f string, a ...any) {
	fmt.Fprintf(os.Stderr, "kubeload: %s "+f+"\n", append([]any{time.Now().UTC().Format("15:04:05")}, a...)...)
}

func nodeName(i int) string { return fmt.Sprintf("kn-%d", i) }

// podAddr is the address of endpoint k (of all): 10.244.x.y, y in 1..250.
func podAddr(k int) string { return fmt.Sprintf("10.244.%d.%d", k/250, k%250+1) }

// servePods answers on both pod ports of every 10.244/16 address with
// the port's number.
func servePods(ctx context.Context, e *env) error {
	for _, port := range []int{portA, portB} {
		ln, err := net.Listen("tcp", fmt.Sprintf("0.0.0.0:%d", port))
		if err != nil {
			return fmt.Errorf("pod server: %w", err)
		}
		body := []byte(strconv.Itoa(port))
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(body) })}
		go srv.Serve(ln)
		e.Cleanup(func() { srv.Close() })
	}
	return nil
}

// createObjects creates the nodes, the namespace, the Services, their
// EndpointSlices (endpoints spread evenly, all on kn-0) and the pods, and
// returns the slices as created.
func createObjects(ctx context.Context, c kubernetes.Interface, cfg config) ([]*discoveryv1.EndpointSlice, error) {
	for i := range cfg.Agents {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName(i), Labels: map[string]string{"fogmesh.io/site": "s1", "topology.kubernetes.io/region": "r1"}}}
		if _, err := c.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
			return nil, err
		}
	}
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	if _, err := c.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "app"}}, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	// Endpoint k of all belongs to Service k*S/E: the first E%S Services
	// have one more.
	first := func(i int) int { return i * cfg.Endpoints / cfg.Services }
	svcOf := make([]int, cfg.Endpoints)
	for i := range cfg.Services {
		for k := first(i); k < first(i+1); k++ {
			svcOf[k] = i
		}
	}
	if cfg.Pods {
		if err := parallel(ctx, cfg.Endpoints, 32, func(k int) error {
			i := svcOf[k]
			p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("svc-%d-%d", i, k), Namespace: ns, Labels: map[string]string{"app": fmt.Sprintf("svc-%d", i)}},
				Spec: corev1.PodSpec{NodeName: nodeName(0), ServiceAccountName: "app", AutomountServiceAccountToken: ptrTo(false),
					Containers: []corev1.Container{{Name: "app", Image: "example.invalid/app", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: portA}}}}}}
			_, err := c.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
			return err
		}); err != nil {
			return nil, fmt.Errorf("create pods: %w", err)
		}
	}
	if err := parallel(ctx, cfg.Services, 32, func(i int) error {
		s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("svc-%d", i), Namespace: ns}, Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": fmt.Sprintf("svc-%d", i)},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, AppProtocol: ptrTo("http"), TargetPort: intstr.FromString("http")}}}}
		_, err := c.CoreV1().Services(ns).Create(ctx, s, metav1.CreateOptions{})
		return err
	}); err != nil {
		return nil, fmt.Errorf("create services: %w", err)
	}
	out := make([]*discoveryv1.EndpointSlice, cfg.Services)
	if err := parallel(ctx, cfg.Services, 32, func(i int) error {
		sl := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("svc-%d-1", i), Namespace: ns,
			Labels: map[string]string{discoveryv1.LabelServiceName: fmt.Sprintf("svc-%d", i)}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptrTo("http"), Port: ptrTo(int32(portA)), Protocol: ptrTo(corev1.ProtocolTCP)}}}
		for k := first(i); k < first(i+1); k++ {
			ep := discoveryv1.Endpoint{Addresses: []string{podAddr(k)}, NodeName: ptrTo(nodeName(0)), Conditions: discoveryv1.EndpointConditions{Ready: ptrTo(true)}}
			if cfg.Pods {
				ep.TargetRef = &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: fmt.Sprintf("svc-%d-%d", i, k)}
			}
			sl.Endpoints = append(sl.Endpoints, ep)
		}
		got, err := c.DiscoveryV1().EndpointSlices(ns).Create(ctx, sl, metav1.CreateOptions{})
		out[i] = got
		return err
	}); err != nil {
		return nil, fmt.Errorf("create endpointslices: %w", err)
	}
	return out, nil
}

func ptrTo[T any](v T) *T { return &v }

// parallel runs f(0..n-1) on workers goroutines; the first error stops it.
func parallel(ctx context.Context, n, workers int, f func(int) error) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					once.Do(func() { first = err; cancel() })
					return
				}
			}
		}()
	}
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return first
}

// startProc starts the fogmesh binary with args and -addr-file, logging
// to DIR/name.log, and waits for its addresses. The cleanup stops it
// with SIGTERM (an agent then removes its nftables table).
func startProc(ctx context.Context, e *env, cfg config, name string, args ...string) (*exec.Cmd, map[string]string, error) {
	addrFile := filepath.Join(cfg.Dir, name+".addrs.json")
	lf, err := os.Create(filepath.Join(cfg.Dir, name+".log"))
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(cfg.Bin, append(args, "-addr-file", addrFile)...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, nil, fmt.Errorf("start %s: %w", name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); lf.Close(); close(done) }()
	e.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	var addrs map[string]string
	err = waitFor(ctx, time.Minute, name+" to write its addresses", func() (bool, string) {
		select {
		case <-done:
			return false, "exited"
		default:
		}
		b, err := os.ReadFile(addrFile)
		return err == nil && json.Unmarshal(b, &addrs) == nil, ""
	})
	if err != nil {
		b, _ := os.ReadFile(filepath.Join(cfg.Dir, name+".log"))
		if len(b) > 4000 {
			b = b[len(b)-4000:]
		}
		return nil, nil, fmt.Errorf("%w; its log:\n%s", err, b)
	}
	return cmd, addrs, nil
}

// waitFor polls cond every 50ms until it holds, d passes or ctx ends; the
// error names what and cond's last note.
func waitFor(ctx context.Context, d time.Duration, what string, cond func() (bool, string)) error {
	deadline := time.Now().Add(d)
	nextLog := time.Now().Add(15 * time.Second)
	var note string
	for {
		var ok bool
		if ok, note = cond(); ok {
			return nil
		}
		if time.Now().After(nextLog) {
			logf("still waiting for %s: %s", what, note)
			nextLog = time.Now().Add(15 * time.Second)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("waited %v for %s: %s", d, what, note)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// admin is a client of the secure control plane's admin API.
type admin struct {
	base, ca, token string
	cli             *http.Client
}

func newAdmin(ctx context.Context, state, addr string) (*admin, error) {
	a := &admin{base: "https://" + addr, ca: filepath.Join(state, "ca.pem")}
	err := waitFor(ctx, time.Minute, "the control plane's CA and admin token", func() (bool, string) {
		b, err1 := os.ReadFile(a.ca)
		t, err2 := os.ReadFile(filepath.Join(state, "admin.token"))
		if err1 != nil || err2 != nil {
			return false, fmt.Sprint(err1, err2)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(b)
		a.token = strings.TrimSpace(string(t))
		a.cli = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
		return true, ""
	})
	return a, err
}

func (a *admin) get(ctx context.Context, path string) ([]byte, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, a.base+path, nil)
	req.Header.Set("Authorization", "Bearer "+a.token)
	resp, err := a.cli.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %s", path, resp.Status, b)
	}
	return b, err
}

func (a *admin) getJSON(ctx context.Context, path string, v any) error {
	b, err := a.get(ctx, path)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// metrics reads the unlabelled series of /metrics.
func (a *admin) metrics(ctx context.Context) (map[string]float64, error) {
	b, err := a.get(ctx, "/metrics")
	if err != nil {
		return nil, err
	}
	m := map[string]float64{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, " "); ok && !strings.HasPrefix(k, "#") {
			if f, err := strconv.ParseFloat(v, 64); err == nil {
				m[k] = f
			}
		}
	}
	return m, nil
}

// token makes a join token of site with the CLI, as an operator does.
func (a *admin) joinToken(ctx context.Context, bin, site string) (string, error) {
	out, err := exec.CommandContext(ctx, bin, "token", "create", "-site", site, "-ttl", "10m", "-server", a.base, "-ca", a.ca, "-token", a.token).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("token create: %v: %s", err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

// procStat is a process's memory from /proc.
type procStat struct{ rss, hwm int64 }

func procStatus(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return procStat{}, err
	}
	var st procStat
	for _, l := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(l, ":")
		n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmRSS":
			st.rss = n << 10
		case "VmHWM":
			st.hwm = n << 10
		}
	}
	return st, nil
}

// shuffled is a random order of 0..n-1.
func shuffled(n int) []int { return rand.Perm(n) }
