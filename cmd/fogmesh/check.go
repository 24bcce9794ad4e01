package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/cli"
	"github.com/fogmesh/fogmesh/internal/control"
	"github.com/fogmesh/fogmesh/internal/promtext"
)

// fogmesh check: is the mesh healthy, and if not, what to do. Each check
// prints one line (✔ ok, ‼ warning, ✖ failed) and a hint when not ok;
// the exit status is 1 when any check failed.

// checkResult is one check's outcome (-o json prints a list of them).
type checkResult struct {
	Name   string `json:"name"`
	Status string `json:"status"` // ok, warn or fail
	Detail string `json:"detail"`
	Hint   string `json:"hint,omitempty"`
}

type checkOpts struct {
	server, agents string
	wait, maxSkew  time.Duration
	certMin        time.Duration
}

func runCheck(args []string) error {
	fs := flag.NewFlagSet("fogmesh check", flag.ContinueOnError)
	var o checkOpts
	server := serverFlag(fs)
	fs.StringVar(&o.agents, "agents", "", "agent APIs to check (URL or NAME=URL, comma-separated; default: each ready node's registered adminAddress)")
	fs.DurationVar(&o.wait, "wait", 10*time.Second, "how long agents may take to ack the latest configuration before 'in sync' fails")
	fs.DurationVar(&o.maxSkew, "max-skew", 2*time.Second, "largest clock difference allowed between this host, the control plane and the agents")
	fs.DurationVar(&o.certMin, "cert-min", 24*time.Hour, "a certificate with less time left (or under a fifth of its lifetime) fails")
	out := fs.String("o", "table", "output: table or json")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *out != "table" && *out != "json" {
		return cli.Usagef("check: -o %q is not table or json", *out)
	}
	if fs.NArg() != 0 {
		return cli.Usagef("check: no arguments expected, got %q", fs.Args())
	}
	o.server = strings.TrimRight(*server, "/")
	ctx, stop := cli.SignalContext()
	defer stop()
	results := runChecks(ctx, o)
	failed := 0
	for _, r := range results {
		if r.Status == "fail" {
			failed++
		}
	}
	if *out == "json" {
		if err := printChecksJSON(os.Stdout, results); err != nil {
			return err
		}
	} else {
		printChecks(os.Stdout, results)
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d checks failed", failed, len(results))
	}
	return nil
}

// printChecks prints the results as lines. A detail or hint holds text of
// the control plane's and agents' answers (node names, error bodies) and
// of files: it goes through termSafe, as in fogmesh get and stat, so no
// answer can move the cursor, recolour or clear the terminal, or add lines.
func printChecks(w io.Writer, results []checkResult) {
	mark := map[string]string{"ok": "✔", "warn": "‼", "fail": "✖"}
	for _, r := range results {
		fmt.Fprintf(w, "%s %s: %s\n", mark[r.Status], termSafe(r.Name), termSafe(r.Detail))
		if r.Hint != "" && r.Status != "ok" {
			fmt.Fprintf(w, "    hint: %s\n", termSafe(r.Hint))
		}
	}
	failed, warned := 0, 0
	for _, r := range results {
		switch r.Status {
		case "fail":
			failed++
		case "warn":
			warned++
		}
	}
	if failed == 0 {
		fmt.Fprintf(w, "\nStatus: ✔ all %d checks passed (%d warnings)\n", len(results), warned)
	} else {
		fmt.Fprintf(w, "\nStatus: ✖ %d of %d checks failed\n", failed, len(results))
	}
}

// printChecksJSON prints the results as JSON (-o json), every string of
// it terminal-safe (jsonTermSafe).
func printChecksJSON(w io.Writer, results []checkResult) error {
	failed := 0
	for _, r := range results {
		if r.Status == "fail" {
			failed++
		}
	}
	b, err := json.MarshalIndent(map[string]any{"ok": failed == 0, "checks": results}, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", jsonTermSafe(b))
	return err
}

func checkOK(name, detail string) checkResult {
	return checkResult{Name: name, Status: "ok", Detail: detail}
}
func checkFail(name, detail, hint string) checkResult {
	return checkResult{Name: name, Status: "fail", Detail: detail, Hint: hint}
}
func checkWarn(name, detail, hint string) checkResult {
	return checkResult{Name: name, Status: "warn", Detail: detail, Hint: hint}
}

// agentStatus is what check reads of an agent's /v1/status.
type agentStatus struct {
	DNSAddr string    `json:"dnsAddr"`
	Time    time.Time `json:"time"`
	skew    time.Duration
	rtt     time.Duration
	metrics []promtext.Sample
	err     error
}

func runChecks(ctx context.Context, o checkOpts) []checkResult {
	var rs []checkResult
	// 1. The control plane answers, over verified TLS, and takes our credentials.
	c, err := adminClient()
	if err != nil {
		return append(rs, checkFail("control plane reachable", err.Error(), "set -ca or $FOGMESH_CA to the control plane's ca.pem (fogmesh dev prints it)"))
	}
	t0 := time.Now()
	resp, err := c.Get(o.server + "/healthz")
	t1 := time.Now()
	if err != nil {
		hint := "is 'fogmesh control' running and listening there? set -server or $FOGMESH_SERVER"
		var ue x509.UnknownAuthorityError
		if errors.As(err, &ue) || strings.Contains(err.Error(), "certificate") {
			hint = "the control plane's certificate is not trusted: set -ca or $FOGMESH_CA to its ca.pem (STATE/ca.pem)"
		}
		return append(rs, checkFail("control plane reachable", err.Error(), hint))
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		rs = append(rs, checkFail("control plane reachable", fmt.Sprintf("%s /healthz: %s %s", o.server, resp.Status, strings.TrimSpace(string(body))),
			"the store is degraded: see the control plane's log (disk full? etcd quorum?)"))
	} else {
		rs = append(rs, checkOK("control plane reachable", fmt.Sprintf("%s answers in %s", o.server, t1.Sub(t0).Round(time.Millisecond))))
	}
	var st control.Status
	if err := call("GET", o.server+"/v1/status", nil, &st); err != nil {
		return append(rs, checkFail("admin credentials accepted", err.Error(), "give an admin token (-token, $FOGMESH_TOKEN) or certificate (-cert/-key)"))
	}
	rs = append(rs, checkOK("admin credentials accepted", fmt.Sprintf("store %s at revision %d", st.Store, st.Revision)))

	// 2. Certificates: the CA roots and the control plane's own.
	rs = append(rs, checkCerts(o, resp)...)

	// 3. Agents: connected, then in sync (acked the latest revision).
	nodes, rev, err := listNodes(o.server)
	if err != nil {
		return append(rs, checkFail("agents connected", err.Error(), ""))
	}
	rs = append(rs, checkConnected(nodes))
	rs = append(rs, checkInSync(ctx, o, nodes, rev))

	// 4. What the agents' own APIs say: clock, node certificate, DNS, gossip.
	targets, terr := agentTargets(ctx, o.server, o.agents)
	for _, n := range nodes {
		if !n.Status.Ready || !n.Status.Connected {
			delete(targets, n.Meta.Name) // the connected check reports it
		}
	}
	statuses := map[string]*agentStatus{}
	for name, url := range targets {
		statuses[name] = readAgent(ctx, url)
	}
	rs = append(rs, checkClock(o, resp, t0, t1, statuses))
	if terr != nil {
		rs = append(rs, checkWarn("agent APIs reachable", terr.Error(), "run check where the agents' APIs are reachable, or name them with -agents"))
	} else {
		rs = append(rs, checkAgentAPIs(statuses))
		rs = append(rs, checkNodeCerts(o, statuses))
		rs = append(rs, checkDNS(ctx, o, statuses))
		rs = append(rs, checkGossip(nodes, statuses))
	}
	rs = append(rs, checkPaths(o, nodes))
	return rs
}

// certLeft fails a certificate with less than certMin, or a fifth of
// its lifetime, left.
func certLeft(o checkOpts, c *x509.Certificate, now time.Time) (string, bool) {
	left := c.NotAfter.Sub(now)
	life := c.NotAfter.Sub(c.NotBefore)
	switch {
	case now.Before(c.NotBefore):
		return fmt.Sprintf("%s not valid before %s (is this clock right?)", c.Subject, c.NotBefore.Format(time.RFC3339)), false
	case left <= 0:
		return fmt.Sprintf("%s expired %s ago", c.Subject, (-left).Round(time.Second)), false
	case left < o.certMin || left < life/5:
		return fmt.Sprintf("%s expires in %s", c.Subject, left.Round(time.Minute)), false
	}
	return "", true
}

func checkCerts(o checkOpts, healthz *http.Response) []checkResult {
	now := time.Now()
	var rs []checkResult
	var bundle []byte
	var roots []*x509.Certificate
	err := callRaw(o.server+"/v1/bundle", &bundle)
	if err == nil {
		for rest := bundle; ; {
			var b *pem.Block
			b, rest = pem.Decode(rest)
			if b == nil {
				break
			}
			c, perr := x509.ParseCertificate(b.Bytes)
			if perr != nil {
				err = fmt.Errorf("bundle: %w", perr)
				break
			}
			roots = append(roots, c)
		}
	}
	switch {
	case err != nil && strings.Contains(err.Error(), "insecure mode"):
		rs = append(rs, checkWarn("CA roots valid", "the control plane runs in insecure mode: no CA", "run the control plane without -insecure"))
	case err != nil:
		rs = append(rs, checkFail("CA roots valid", err.Error(), ""))
	case len(roots) == 0:
		rs = append(rs, checkFail("CA roots valid", "the trust bundle holds no certificate", "see the control plane's log"))
	default:
		var bad []string
		soonest := roots[0]
		for _, c := range roots {
			if msg, good := certLeft(o, c, now); !good {
				bad = append(bad, msg)
			}
			if c.NotAfter.Before(soonest.NotAfter) {
				soonest = c
			}
		}
		if len(bad) > 0 {
			rs = append(rs, checkFail("CA roots valid", strings.Join(bad, "; "), "rotate the CA: fogmesh ca rotate"))
		} else {
			rs = append(rs, checkOK("CA roots valid", fmt.Sprintf("%d root(s), the first to expire in %s", len(roots), soonest.NotAfter.Sub(now).Round(time.Hour))))
		}
	}
	if healthz.TLS == nil || len(healthz.TLS.PeerCertificates) == 0 {
		return append(rs, checkWarn("control plane certificate valid", "the admin API is plain HTTP", "serve the admin API over TLS (the default)"))
	}
	leaf := healthz.TLS.PeerCertificates[0]
	if msg, good := certLeft(o, leaf, now); !good {
		return append(rs, checkFail("control plane certificate valid", msg, "restart the control plane to issue a new serving certificate, or rotate the CA"))
	}
	return append(rs, checkOK("control plane certificate valid", fmt.Sprintf("expires in %s", leaf.NotAfter.Sub(now).Round(time.Hour))))
}

// callRaw GETs a non-JSON admin resource.
func callRaw(url string, out *[]byte) error {
	c, err := adminClient()
	if err != nil {
		return err
	}
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		return err
	}
	if adminAuth.token != nil && *adminAuth.token != "" {
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(*adminAuth.token))
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(b)))
	}
	*out = b
	return nil
}

func checkConnected(nodes []api.Node) checkResult {
	if len(nodes) == 0 {
		return checkWarn("agents connected", "no node has registered", "start an agent: fogmesh agent -control ADDR -join-token TOKEN (fogmesh token create -site SITE)")
	}
	var down []string
	for _, n := range nodes {
		if !n.Status.Ready || !n.Status.Connected {
			why := "not connected"
			if !n.Status.LastHeartbeat.IsZero() {
				why = "last heartbeat " + time.Since(n.Status.LastHeartbeat).Round(time.Second).String() + " ago"
			}
			down = append(down, fmt.Sprintf("%s (site %s: %s)", n.Meta.Name, n.Spec.Site, why))
		}
	}
	if len(down) > 0 {
		return checkFail("agents connected", fmt.Sprintf("%d of %d nodes down: %s", len(down), len(nodes), strings.Join(down, ", ")),
			"is the agent process running on that node? it must reach the control plane's sync address; see its log, then 'fogmesh get nodes'")
	}
	return checkOK("agents connected", fmt.Sprintf("%d nodes ready and connected", len(nodes)))
}

// checkInSync waits up to o.wait for every ready node to ack the latest
// revision (an agent acks each update it applies).
func checkInSync(ctx context.Context, o checkOpts, nodes []api.Node, rev uint64) checkResult {
	deadline := time.Now().Add(o.wait)
	for {
		var behind []string
		for _, n := range nodes {
			if n.Status.Ready && n.Status.Connected && n.Status.AckedVersion < rev {
				behind = append(behind, fmt.Sprintf("%s at %d", n.Meta.Name, n.Status.AckedVersion))
			}
		}
		if len(behind) == 0 {
			return checkOK("agents in sync", fmt.Sprintf("every connected agent acked configuration version %d", rev))
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return checkFail("agents in sync", fmt.Sprintf("behind version %d: %s", rev, strings.Join(behind, ", ")),
				"an agent that rejects an update logs why (fogmesh_agent_config_rejected_total); see its log and 'fogmesh get nodes'")
		}
		select {
		case <-ctx.Done():
		case <-time.After(250 * time.Millisecond):
		}
		var err error
		if nodes, rev, err = listNodes(o.server); err != nil {
			return checkFail("agents in sync", err.Error(), "")
		}
	}
}

// readAgent reads an agent's status (and its clock, from the middle of
// the round trip) and metrics.
func readAgent(ctx context.Context, url string) *agentStatus {
	st := &agentStatus{}
	t0 := time.Now()
	_, b, err := agentGet(ctx, url, "/v1/status")
	t1 := time.Now()
	if err == nil {
		err = json.Unmarshal(b, st)
	}
	if err != nil {
		st.err = err
		return st
	}
	st.rtt = t1.Sub(t0)
	if !st.Time.IsZero() {
		st.skew = st.Time.Sub(t0.Add(st.rtt / 2))
	}
	sc, err := scrapeAgent(ctx, url)
	if err != nil {
		st.err = err
		return st
	}
	st.metrics = sc.Samples
	return st
}

func checkClock(o checkOpts, healthz *http.Response, t0, t1 time.Time, agents map[string]*agentStatus) checkResult {
	var bad, parts []string
	worst := time.Duration(0)
	if d, err := http.ParseTime(healthz.Header.Get("Date")); err == nil {
		// Date has whole seconds: the control plane's clock is in [d, d+1s).
		skew := d.Add(500 * time.Millisecond).Sub(t0.Add(t1.Sub(t0) / 2))
		slack := 500*time.Millisecond + t1.Sub(t0)/2
		if math.Abs(float64(skew)) > float64(o.maxSkew+slack) {
			bad = append(bad, fmt.Sprintf("control plane %+.1fs", skew.Seconds()))
		}
		parts = append(parts, "control plane")
	}
	names := sortedKeys(agents)
	for _, n := range names {
		a := agents[n]
		if a.err != nil || a.Time.IsZero() {
			continue
		}
		if math.Abs(float64(a.skew)) > float64(o.maxSkew+a.rtt/2) {
			bad = append(bad, fmt.Sprintf("%s %+.3fs", n, a.skew.Seconds()))
		}
		worst = max(worst, a.skew.Abs())
		parts = append(parts, n)
	}
	if len(bad) > 0 {
		return checkFail("clock skew", fmt.Sprintf("off from this host by more than %s: %s", o.maxSkew, strings.Join(bad, ", ")),
			"run NTP (chrony, systemd-timesyncd) on every node: certificates and heartbeats need clocks within seconds")
	}
	return checkOK("clock skew", fmt.Sprintf("%s within %s of this host (agents at most %s)", strings.Join(parts, ", "), o.maxSkew, worst.Round(time.Millisecond)))
}

func checkAgentAPIs(agents map[string]*agentStatus) checkResult {
	var bad []string
	for _, n := range sortedKeys(agents) {
		if err := agents[n].err; err != nil {
			bad = append(bad, fmt.Sprintf("%s: %v", n, err))
		}
	}
	if len(bad) > 0 {
		return checkWarn("agent APIs reachable", strings.Join(bad, "; "),
			"the agent API listens on loopback by default: run check on that node, or name the APIs with -agents")
	}
	return checkOK("agent APIs reachable", fmt.Sprintf("%d agents answer", len(agents)))
}

// metricValue is the first sample of name in ss.
func metricValue(ss []promtext.Sample, name string) (float64, bool) {
	for _, s := range ss {
		if s.Name == name {
			return s.Value, true
		}
	}
	return 0, false
}

func checkNodeCerts(o checkOpts, agents map[string]*agentStatus) checkResult {
	var bad []string
	soonest, n := time.Duration(math.MaxInt64), 0
	for _, name := range sortedKeys(agents) {
		a := agents[name]
		v, found := metricValue(a.metrics, "fogmesh_agent_node_certificate_expiry_seconds")
		if a.err != nil || !found || v == 0 { // 0: insecure, no certificate
			continue
		}
		n++
		left := time.Duration(v * float64(time.Second))
		soonest = min(soonest, left)
		if left <= 0 {
			bad = append(bad, fmt.Sprintf("%s expired %s ago", name, (-left).Round(time.Second)))
		} else if left < o.certMin {
			bad = append(bad, fmt.Sprintf("%s expires in %s", name, left.Round(time.Minute)))
		}
	}
	switch {
	case len(bad) > 0:
		return checkFail("node certificates valid", strings.Join(bad, ", "),
			"an agent renews at half its certificate's life while it reaches the control plane: reconnect it; past expiry, re-join with a new token")
	case n == 0:
		return checkWarn("node certificates valid", "no agent reported a node certificate", "insecure mode, or no agent API reachable")
	}
	return checkOK("node certificates valid", fmt.Sprintf("%d agents, the first to expire in %s", n, soonest.Round(time.Hour)))
}

// checkDNS asks each agent's DNS server for every service's name (at most
// three) and wants an address back.
func checkDNS(ctx context.Context, o checkOpts, agents map[string]*agentStatus) checkResult {
	var resp control.ListResponse
	if err := call("GET", o.server+"/v1/services", nil, &resp); err != nil {
		return checkFail("DNS answering", err.Error(), "")
	}
	var names []string
	for _, raw := range resp.Items {
		var s api.Service
		if json.Unmarshal(raw, &s) == nil && len(names) < 3 {
			names = append(names, s.Meta.Name+"."+s.Meta.Namespace+".mesh")
		}
	}
	if len(names) == 0 {
		return checkWarn("DNS answering", "no service to ask for", "apply a service: fogmesh apply -f FILE")
	}
	var bad []string
	asked := 0
	for _, n := range sortedKeys(agents) {
		a := agents[n]
		if a.err != nil || a.DNSAddr == "" {
			continue
		}
		r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, a.DNSAddr)
		}}
		for _, name := range names {
			qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			addrs, err := r.LookupHost(qctx, name)
			cancel()
			asked++
			if err != nil || len(addrs) == 0 {
				bad = append(bad, fmt.Sprintf("%s (%s) for %s: %v", n, a.DNSAddr, name, err))
			}
		}
	}
	switch {
	case len(bad) > 0:
		return checkFail("DNS answering", strings.Join(bad, "; "), "see the agent's log; is its dnsAddr bound, and does 'fogmesh routes' on that node list the service?")
	case asked == 0:
		return checkWarn("DNS answering", "no agent DNS address known", "agents report dnsAddr in their /v1/status: upgrade them, or run check on the node")
	}
	return checkOK("DNS answering", fmt.Sprintf("%d agents answered %d queries (%s)", asked/len(names), asked, strings.Join(names, ", ")))
}

// checkGossip wants each agent with gossip to see every ready gossiping
// node of its site.
func checkGossip(nodes []api.Node, agents map[string]*agentStatus) checkResult {
	want := map[string]int{} // site/region -> ready gossiping nodes
	site := map[string]string{}
	for _, n := range nodes {
		k := n.Spec.Region + "/" + n.Spec.Site
		site[n.Meta.Name] = k
		if n.Status.Ready && n.Spec.GossipAddress != "" {
			want[k]++
		}
	}
	var bad []string
	checked := 0
	for _, n := range nodes {
		a := agents[n.Meta.Name]
		if !n.Status.Ready || n.Spec.GossipAddress == "" || a == nil || a.err != nil {
			continue
		}
		got, _ := metricValue(a.metrics, "fogmesh_agent_gossip_members")
		checked++
		if w := want[site[n.Meta.Name]]; int(got) != w {
			bad = append(bad, fmt.Sprintf("%s sees %d of %d members of site %s", n.Meta.Name, int(got), w, n.Spec.Site))
		}
	}
	switch {
	case len(bad) > 0:
		return checkFail("gossip healthy", strings.Join(bad, ", "),
			"the agents of a site must reach each other's gossipAddr (UDP and TCP); check firewalls, and that they share the control plane's gossip key")
	case checked == 0:
		return checkWarn("gossip healthy", "no agent runs site gossip", "set gossipAddr in the agents' config for dead-peer detection within a second")
	}
	return checkOK("gossip healthy", fmt.Sprintf("%d agents see every member of their site", checked))
}

// checkPaths wants every path a ready node reports to a ready peer to be
// up (direct, punched or relayed); paths to nodes that are down are the
// connected check's business.
func checkPaths(o checkOpts, nodes []api.Node) checkResult {
	var ps []control.NodePath
	if err := call("GET", o.server+"/v1/paths", nil, &ps); err != nil {
		return checkFail("paths up", err.Error(), "")
	}
	ready := map[string]bool{}
	for _, n := range nodes {
		ready[n.Meta.Name] = n.Status.Ready
	}
	kinds := map[string]int{}
	var bad []string
	for _, p := range ps {
		if !ready[p.Node] || !ready[p.Peer] {
			continue
		}
		switch p.Kind {
		case "direct", "punched":
		case "relayed":
			if p.Relay == "" {
				bad = append(bad, fmt.Sprintf("%s→%s relayed through no relay", p.Node, p.Peer))
			}
		default:
			bad = append(bad, fmt.Sprintf("%s→%s %q", p.Node, p.Peer, p.Kind))
		}
		kinds[p.Kind]++
	}
	if len(bad) > 0 {
		return checkFail("paths up", strings.Join(bad, ", "), "see 'fogmesh get paths' and the agents' relays setting")
	}
	var parts []string
	for _, k := range sortedKeys(kinds) {
		parts = append(parts, fmt.Sprintf("%d %s", kinds[k], k))
	}
	if len(parts) == 0 {
		return checkOK("paths up", "no path in use yet (paths open with the first request to a peer)")
	}
	return checkOK("paths up", strings.Join(parts, ", ")+" between ready nodes")
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
