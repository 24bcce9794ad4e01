package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// agent is a running agent and what the bench knows of it.
type agent struct {
	name  string
	p     *exec.Cmd
	addrs map[string]string
	vip   []string // the virtual IP of svc-i, from the agent's DNS
	cli   *http.Client
}

// resolveAll asks the agent's DNS for every Service's name until each
// answers with an address of the agent's range.
func (a *agent) resolveAll(ctx context.Context, n int) error {
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", a.addrs["dns"])
	}}
	return parallel(ctx, n, 16, func(i int) error {
		name := fmt.Sprintf("svc-%d.%s.mesh.", i, ns)
		return waitFor(ctx, 3*time.Minute, a.name+" to resolve "+name, func() (bool, string) {
			c, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			ips, err := r.LookupHost(c, name)
			if err != nil || len(ips) == 0 {
				return false, fmt.Sprint(ips, err)
			}
			a.vip[i] = ips[0]
			return strings.HasPrefix(ips[0], "127."), ips[0]
		})
	})
}

// get requests / of svc-i through the agent's virtual IP; the body names
// the pod port that answered.
func (a *agent) get(ctx context.Context, i int) (string, error) {
	return getBody(ctx, a.cli, "http://"+a.vip[i]+"/")
}

func getBody(ctx context.Context, cli *http.Client, url string) (string, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := cli.Do(req)
	if err != nil {
		return "", err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", resp.Status, b)
	}
	return string(b), err
}

// measureChanges moves the endpoints of cfg.Changes Services, in random
// order at cfg.Rate, from portA to portB (one EndpointSlice update each),
// and for each change and agent times from the update's answer until a
// request through the agent's virtual IP reaches the new port: the time
// the agent routes by the change, within cfg.ProbeEvery.
func measureChanges(ctx context.Context, c kubernetes.Interface, cfg config, sls []*discoveryv1.EndpointSlice, agents []*agent, res *result) error {
	if cfg.Changes == 0 {
		return nil
	}
	logf("%d EndpointSlice changes at %.1f/s, each probed at every agent every %v", cfg.Changes, cfg.Rate, cfg.ProbeEvery)
	order := shuffled(cfg.Services)[:cfg.Changes]
	per := make([][]time.Duration, len(agents)) // per agent, per change (-1: missed)
	for j := range per {
		per[j] = make([]time.Duration, cfg.Changes)
	}
	updates := make([]time.Duration, 0, cfg.Changes)
	tick := time.NewTicker(time.Duration(float64(time.Second) / cfg.Rate))
	defer tick.Stop()
	var wg sync.WaitGroup
	var missMu sync.Mutex
	want := strconv.Itoa(portB)
	for n, i := range order {
		select {
		case <-ctx.Done():
			wg.Wait()
			return ctx.Err()
		case <-tick.C:
		}
		sl := sls[i].DeepCopy()
		sl.Ports[0].Port = ptrTo(int32(portB))
		t0 := time.Now()
		got, err := c.DiscoveryV1().EndpointSlices(ns).Update(ctx, sl, metav1.UpdateOptions{})
		if err != nil {
			wg.Wait()
			return fmt.Errorf("update %s: %w", sl.Name, err)
		}
		committed := time.Now()
		updates = append(updates, committed.Sub(t0))
		sls[i] = got
		for j, a := range agents {
			wg.Add(1)
			go func() { // probeChange
				defer wg.Done()
				for {
					sent := time.Now()
					body, err := a.get(ctx, i)
					if body == want {
						per[j][n] = sent.Sub(committed)
						return
					}
					if time.Since(committed) > cfg.ChangeTimeout || ctx.Err() != nil {
						per[j][n] = -1
						miss := a.describeMiss(ctx, cfg, i, body, err)
						missMu.Lock()
						res.Misses = append(res.Misses, miss)
						missMu.Unlock()
						return
					}
					time.Sleep(cfg.ProbeEvery)
				}
			}()
		}
	}
	wg.Wait()
	all := make([]time.Duration, 0, cfg.Changes)
	for n := range cfg.Changes {
		var worst time.Duration
		missed := false
		for j := range agents {
			if per[j][n] < 0 {
				missed = true
				res.Missed++
			}
			worst = max(worst, per[j][n])
		}
		if !missed {
			all = append(all, worst)
		}
	}
	res.AllP50, res.AllP99, res.AllMax = pct(all, 50), pct(all, 99), pct(all, 100)
	res.UpdateP50 = pct(updates, 50)
	for j := range agents {
		seen := slices.DeleteFunc(slices.Clone(per[j]), func(d time.Duration) bool { return d < 0 })
		res.AgentP50 = append(res.AgentP50, pct(seen, 50))
		res.AgentP99 = append(res.AgentP99, pct(seen, 99))
	}
	return nil
}

// describeMiss says what agent a answered for svc-i when it never routed by
// a change: the last probe's body or error, the agent's route for the
// Service (its admin API) and the tail of its log.
func (a *agent) describeMiss(ctx context.Context, cfg config, i int, body string, err error) string {
	svc := fmt.Sprintf("svc-%d", i)
	var b strings.Builder
	fmt.Fprintf(&b, "agent %s, %s (virtual IP %s): last probe %q, %v\n", a.name, svc, a.vip[i], body, err)
	c, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	routes, rerr := getBody(c, http.DefaultClient, "http://"+a.addrs["admin"]+"/v1/routes")
	var rs []json.RawMessage
	if rerr == nil {
		rerr = json.Unmarshal([]byte(routes), &rs)
	}
	if rerr != nil {
		fmt.Fprintf(&b, "  routes: %v\n", rerr)
	}
	for _, r := range rs {
		if strings.Contains(string(r), `"`+svc+`.`) || strings.Contains(string(r), `/`+svc+`"`) {
			fmt.Fprintf(&b, "  route: %s\n", r)
		}
	}
	if lg, lerr := os.ReadFile(filepath.Join(cfg.Dir, a.name+".log")); lerr == nil {
		if len(lg) > 6000 {
			lg = lg[len(lg)-6000:]
		}
		fmt.Fprintf(&b, "  log tail:\n%s", lg)
	}
	return b.String()
}

// pct is the p-th percentile (nearest rank) of ds; 0 for none.
func pct(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	k := int(float64(len(s))*p/100+0.5) - 1
	return s[min(max(k, 0), len(s)-1)]
}

// measureCapture compares, at the capturing agent a, requests to a
// Service's ClusterIP (redirected into the agent by its nftables rules)
// with requests to its virtual IP: interleaved rounds, a new connection
// per request and keep-alive requests on one connection.
func measureCapture(ctx context.Context, c kubernetes.Interface, cfg config, a *agent, res *result) error {
	var st struct {
		Capture struct {
			Active       bool
			Destinations int
			Note         string
		}
	}
	b, err := getBody(ctx, http.DefaultClient, "http://"+a.addrs["admin"]+"/v1/status")
	if err == nil {
		err = json.Unmarshal([]byte(b), &st)
	}
	if err != nil {
		return fmt.Errorf("%s status: %w", a.name, err)
	}
	if !st.Capture.Active {
		return fmt.Errorf("%s does not capture: %s", a.name, st.Capture.Note)
	}
	res.CaptureServices = st.Capture.Destinations
	svc, err := c.CoreV1().Services(ns).Get(ctx, "svc-0", metav1.GetOptions{})
	if err != nil {
		return err
	}
	targets := map[string]string{"vip": "http://" + a.vip[0] + "/", "clusterip": "http://" + svc.Spec.ClusterIP + "/"}
	newConn := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for path, url := range targets {
		if body, err := getBody(ctx, newConn, url); err != nil || (body != strconv.Itoa(portA) && body != strconv.Itoa(portB)) {
			return fmt.Errorf("%s (%s): %q, %v", path, url, body, err)
		}
	}
	logf("capture against virtual IP at %s: %d rounds of %d requests per path (ClusterIP %s, virtual IP %s; %d ClusterIP:ports captured)",
		a.name, cfg.CaptureRounds, cfg.CaptureReqs, svc.Spec.ClusterIP, a.vip[0], res.CaptureServices)
	lat := map[string][]time.Duration{}
	for r := range cfg.CaptureRounds {
		paths := []string{"vip", "clusterip"}
		if r%2 == 1 {
			paths = []string{"clusterip", "vip"}
		}
		for _, path := range paths {
			keep := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
			for _, style := range []struct {
				name string
				cli  *http.Client
			}{{"new", newConn}, {"keepalive", keep}} {
				for range cfg.CaptureReqs {
					t0 := time.Now()
					if _, err := getBody(ctx, style.cli, targets[path]); err != nil {
						return fmt.Errorf("capture comparison, %s %s: %w", path, style.name, err)
					}
					lat[path+"-"+style.name] = append(lat[path+"-"+style.name], time.Since(t0))
				}
			}
			keep.CloseIdleConnections()
		}
	}
	res.Capture = map[string]latency{}
	for k, ds := range lat {
		var sum time.Duration
		for _, d := range ds {
			sum += d
		}
		res.Capture[k] = latency{P50: pct(ds, 50), P99: pct(ds, 99), Mean: sum / time.Duration(len(ds))}
	}
	return nil
}

func printResult(r result) {
	mib := func(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }
	us := func(d time.Duration) string { return d.Round(10 * time.Microsecond).String() }
	fmt.Printf("services %d, endpoints %d, pods %d, agents %d, secure %v\n", r.Services, r.Endpoints, r.Pods, r.Agents, r.Secure)
	fmt.Printf("create (client-go) %v; control plane start -> all objects in its registry %v; -> every agent resolves and routes every Service %v\n",
		r.Create.Round(time.Millisecond), r.FirstSync.Round(time.Millisecond), r.AgentsReady.Round(time.Millisecond))
	if r.Changes > 0 {
		fmt.Printf("EndpointSlice change -> every agent routes by it (%d changes at %.1f/s, probed every %v): p50 %v p99 %v max %v; missed %d; apiserver update p50 %v; control-plane syncs %.0f\n",
			r.Changes, r.Rate, r.ProbeEvery, us(r.AllP50), us(r.AllP99), us(r.AllMax), r.Missed, us(r.UpdateP50), r.ControlSyncs)
		for j := range r.AgentP50 {
			fmt.Printf("  agent %s: p50 %v p99 %v\n", nodeName(j), us(r.AgentP50[j]), us(r.AgentP99[j]))
		}
		for _, m := range r.Misses {
			fmt.Printf("  missed: %s", m)
		}
	}
	fmt.Printf("control plane RSS: %s after the first sync, %s after the changes (peak %s)\n", mib(r.ControlRSSLoaded), mib(r.ControlRSS), mib(r.ControlHWM))
	for j, rss := range r.AgentRSS {
		fmt.Printf("  agent %s RSS %s\n", nodeName(j), mib(rss))
	}
	if len(r.Capture) > 0 {
		fmt.Printf("capture against virtual IP (%d rounds x %d requests per path, %d ClusterIP:ports captured):\n", r.CaptureRounds, r.CaptureReqs, r.CaptureServices)
		for _, style := range []string{"new", "keepalive"} {
			v, c := r.Capture["vip-"+style], r.Capture["clusterip-"+style]
			fmt.Printf("  %-9s virtual IP p50 %v p99 %v mean %v | ClusterIP p50 %v p99 %v mean %v | capture minus VIP: p50 %+dµs mean %+dµs\n",
				style, us(v.P50), us(v.P99), us(v.Mean), us(c.P50), us(c.P99), us(c.Mean),
				(c.P50 - v.P50).Microseconds(), (c.Mean - v.Mean).Microseconds())
		}
	}
}
