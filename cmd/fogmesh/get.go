package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"reflect"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/cli"
	"github.com/fogmesh/fogmesh/internal/control"
)

var kindAliases = map[string]string{
	"node": "nodes", "nodes": "nodes", "no": "nodes",
	"service": "services", "services": "services", "svc": "services",
	"endpoint": "endpoints", "endpoints": "endpoints", "ep": "endpoints",
	"route": "routes", "routes": "routes", "rt": "routes",
	"destinationpolicy": "destinationpolicies", "destinationpolicies": "destinationpolicies", "dp": "destinationpolicies",
	"session": "sessions", "sessions": "sessions",
	"authorizationpolicy": "authorizationpolicies", "authorizationpolicies": "authorizationpolicies", "ap": "authorizationpolicies",
}

func runGet(args []string) error {
	fs := flag.NewFlagSet("fogmesh get", flag.ContinueOnError)
	server := serverFlag(fs)
	ns := fs.String("n", "", "namespace (default: all)")
	out := fs.String("o", "table", "output: table, json or yaml")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() < 1 || fs.NArg() > 2 {
		return cli.Usagef("get: want KIND [NAME], KIND one of nodes, services, endpoints, routes, destinationpolicies, authorizationpolicies, sessions, trust, paths, cluster")
	}
	if fs.NArg() == 2 && (fs.Arg(0) == "trust" || fs.Arg(0) == "paths" || fs.Arg(0) == "path" || fs.Arg(0) == "cluster") {
		return cli.Usagef("get %s takes no NAME", fs.Arg(0))
	}
	if fs.Arg(0) == "trust" {
		return getTrust(*server, *out)
	}
	if fs.Arg(0) == "cluster" {
		return getCluster(*server, *out)
	}
	if fs.Arg(0) == "paths" || fs.Arg(0) == "path" {
		return getPaths(*server, *out)
	}
	kind, ok := kindAliases[fs.Arg(0)]
	if !ok {
		return cli.Usagef("get: unknown resource %q (want nodes, services, endpoints, routes, destinationpolicies, authorizationpolicies or sessions)", fs.Arg(0))
	}
	url := strings.TrimRight(*server, "/") + "/v1/" + kind
	if *ns != "" {
		url += "?namespace=" + *ns
	}
	var resp control.ListResponse
	if err := call("GET", url, nil, &resp); err != nil {
		return err
	}
	if fs.NArg() == 2 {
		items, err := byName(resp.Items, fs.Arg(1))
		if err != nil {
			return fmt.Errorf("get %s: %w", kind, err)
		}
		resp.Items = items
	}
	switch *out {
	case "json":
		b, _ := json.MarshalIndent(resp.Items, "", "  ")
		fmt.Println(string(jsonTermSafe(b)))
		return nil
	case "yaml":
		b, _ := json.Marshal(resp.Items)
		y, err := yaml.JSONToYAML(b)
		if err != nil {
			return err
		}
		fmt.Print(string(y))
		return nil
	case "table":
	default:
		return cli.Usagef("get: -o %q is not table, json or yaml", *out)
	}
	return printList(os.Stdout, kind, resp.Items)
}

// printList prints the items of kind (GET /v1/KIND's answer) as a table;
// every text of the answer goes through termSafe.
func printList(w io.Writer, kind string, items []json.RawMessage) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	defer tw.Flush()
	switch kind {
	case "nodes":
		fmt.Fprintln(tw, "NAME\tSITE\tREGION\tREADY\tCONNECTED\tLOAD\tMESH ADDRESS\tCONFIG VERSION\tLAST HEARTBEAT")
		var unbound []string
		defer func() {
			tw.Flush()
			for _, u := range unbound { // after the table: what to fix
				fmt.Fprintln(w, u)
			}
		}()
		for _, raw := range items {
			var n api.Node
			if err := json.Unmarshal(raw, &n); err != nil {
				return err
			}
			hb := "-"
			if !n.Status.LastHeartbeat.IsZero() {
				hb = time.Since(n.Status.LastHeartbeat).Round(time.Second).String() + " ago"
			}
			ready := fmt.Sprint(n.Status.Ready)
			if n.Status.Unreachable {
				ready += " (unreachable)" // no heartbeat; still routed (README: stale nodes)
			}
			tfprintf(tw, "%s\t%s\t%s\t%s\t%v\t%g\t%s\t%d\t%s\n", n.Meta.Name, n.Spec.Site, n.Spec.Region,
				ready, n.Status.Connected, n.Status.Load, n.Spec.MeshAddress, n.Status.AckedVersion, hb)
			for _, f := range n.Status.VIPBindFailures {
				unbound = append(unbound, tsprintf("node %s cannot bind %s of service %s (first failed %s): %s; another process holds it",
					n.Meta.Name, f.Address, f.Service, sinceAgo(f.Since, time.Now()), f.Error))
			}
		}
	case "services":
		fmt.Fprintln(tw, "NAMESPACE\tNAME\tVIP\tPORTS\tBALANCER")
		for _, raw := range items {
			var s api.Service
			if err := json.Unmarshal(raw, &s); err != nil {
				return err
			}
			var ports []string
			for _, p := range s.Spec.Ports {
				ports = append(ports, fmt.Sprintf("%s:%d/%s", p.Name, p.Port, p.Protocol))
			}
			tfprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.Meta.Namespace, s.Meta.Name, s.Status.VIP, strings.Join(ports, ","), s.Spec.Balancer)
		}
	case "routes":
		fmt.Fprintln(tw, "NAMESPACE\tNAME\tSERVICE\tRULES")
		for _, raw := range items {
			var r api.Route
			if err := json.Unmarshal(raw, &r); err != nil {
				return err
			}
			var rules []string
			for _, rule := range r.Spec.Rules {
				var bs []string
				for _, b := range rule.Backends {
					sub := b.Subset
					if sub == "" {
						sub = "all"
					}
					bs = append(bs, fmt.Sprintf("%s:%d", sub, b.Weight))
				}
				m := "*"
				if len(rule.Match) > 0 {
					m = fmt.Sprintf("%d match", len(rule.Match))
				}
				rules = append(rules, m+" -> "+strings.Join(bs, "/"))
			}
			if r.Spec.Unmatched == api.UnmatchedReject {
				rules = append(rules, "else -> 404")
			}
			tfprintf(tw, "%s\t%s\t%s\t%s\n", r.Meta.Namespace, r.Meta.Name, r.Spec.Service, strings.Join(rules, "; "))
		}
	case "sessions":
		fmt.Fprintln(tw, "NAMESPACE\tSERVICE\tKEY\tENDPOINT")
		for _, raw := range items {
			var ss api.Session
			if err := json.Unmarshal(raw, &ss); err != nil {
				return err
			}
			tfprintf(tw, "%s\t%s\t%s\t%s\n", ss.Meta.Namespace, ss.Spec.Service, ss.Spec.Key, ss.Spec.Endpoint)
		}
	case "destinationpolicies":
		fmt.Fprintln(tw, "NAMESPACE\tNAME\tSERVICE\tSUBSETS\tBALANCER")
		for _, raw := range items {
			var p api.DestinationPolicy
			if err := json.Unmarshal(raw, &p); err != nil {
				return err
			}
			var ss []string
			for _, s := range p.Spec.Subsets {
				ss = append(ss, s.Name)
			}
			tfprintf(tw, "%s\t%s\t%s\t%s\t%s\n", p.Meta.Namespace, p.Meta.Name, p.Spec.Service, strings.Join(ss, ","), p.Spec.Balancer)
		}
	case "authorizationpolicies":
		fmt.Fprintln(tw, "NAMESPACE\tNAME\tSERVICE\tACTION\tRULES")
		for _, raw := range items {
			var p api.AuthorizationPolicy
			if err := json.Unmarshal(raw, &p); err != nil {
				return err
			}
			svc := p.Spec.Service
			if svc == "" {
				svc = "*"
			}
			if p.Spec.MeshWide {
				svc = "*/" + svc // in every namespace
			}
			tfprintf(tw, "%s\t%s\t%s\t%s\t%d\n", p.Meta.Namespace, p.Meta.Name, svc, p.Spec.Action, len(p.Spec.Rules))
		}
	case "endpoints":
		fmt.Fprintln(tw, "NAMESPACE\tNAME\tSERVICE\tNODE\tADDRESS\tPORTS\tHEALTHY")
		var eps []api.Endpoint
		for _, raw := range items {
			var e api.Endpoint
			if err := json.Unmarshal(raw, &e); err != nil {
				return err
			}
			eps = append(eps, e)
		}
		sort.Slice(eps, func(i, j int) bool { return eps[i].Meta.Key() < eps[j].Meta.Key() })
		for _, e := range eps {
			var ports []string
			for _, p := range e.Spec.Ports {
				ports = append(ports, fmt.Sprintf("%s:%d", p.Name, p.Port))
			}
			node := e.Spec.Node
			if node == "" {
				node = "(static)"
			}
			tfprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%v\n", e.Meta.Namespace, e.Meta.Name, e.Spec.Service, node, e.Spec.Address, strings.Join(ports, ","), e.Status.Healthy)
		}
	}
	return nil
}

// tsprintf is fmt.Sprintf with every string argument (of any string
// type) through termSafe: the text of an answer, not the format's.
func tsprintf(format string, args ...any) string {
	for i, a := range args {
		if v := reflect.ValueOf(a); v.Kind() == reflect.String {
			args[i] = termSafe(v.String())
		}
	}
	return fmt.Sprintf(format, args...)
}

// tfprintf writes tsprintf's line to w.
func tfprintf(w io.Writer, format string, args ...any) {
	io.WriteString(w, tsprintf(format, args...))
}

// trustView is the answer of GET /v1/trust.
type trustView struct {
	TrustDomain string         `json:"trustDomain"`
	Bundles     map[string]int `json:"bundles"` // trust domain -> number of roots
	Revoked     []string       `json:"revoked"`
}

// getTrust runs `fogmesh get trust`: the trust domains the mesh trusts
// (its own, with two roots during a CA rotation's overlap, and federated
// ones) and the deny list.
func getTrust(server, out string) error {
	var v trustView
	if err := call("GET", strings.TrimRight(server, "/")+"/v1/trust", nil, &v); err != nil {
		return err
	}
	switch out {
	case "json", "yaml":
		b, _ := json.MarshalIndent(v, "", "  ")
		if out == "yaml" {
			y, err := yaml.JSONToYAML(b)
			if err != nil {
				return err
			}
			b = y
		} else {
			b = jsonTermSafe(b)
		}
		fmt.Println(strings.TrimSpace(string(b)))
		return nil
	case "table":
	default:
		return cli.Usagef("get: -o %q is not table, json or yaml", out)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TRUST DOMAIN\tROOTS\tKIND")
	tds := make([]string, 0, len(v.Bundles))
	for td := range v.Bundles {
		tds = append(tds, td)
	}
	sort.Strings(tds)
	for _, td := range tds {
		kind := "federated"
		if td == v.TrustDomain {
			kind = "own"
		}
		tfprintf(tw, "%s\t%d\t%s\n", td, v.Bundles[td], kind)
	}
	tw.Flush()
	for _, id := range v.Revoked {
		tfprintf(os.Stdout, "revoked: %s\n", id)
	}
	return nil
}

// getPaths prints every node's path to each peer it talks to, as the
// nodes' last heartbeats reported them.
func getPaths(server, out string) error {
	var ps []control.NodePath
	if err := call("GET", strings.TrimRight(server, "/")+"/v1/paths", nil, &ps); err != nil {
		return err
	}
	switch out {
	case "json":
		b, _ := json.MarshalIndent(ps, "", "  ")
		fmt.Println(string(jsonTermSafe(b)))
		return nil
	case "table":
	default:
		return cli.Usagef("get paths: -o %q is not table or json", out)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	defer tw.Flush()
	fmt.Fprintln(tw, "NODE\tPEER\tPATH\tCARRIER\tRELAY\tREMOTE\tRTT\tBYTES OUT\tBYTES IN\tSINCE")
	for _, p := range ps {
		rtt := "-"
		if p.RTTMillis > 0 {
			rtt = fmt.Sprintf("%.2fms", p.RTTMillis)
		}
		tfprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", p.Node, p.Peer, p.Kind, orDash(p.Carrier), orDash(p.Relay), orDash(p.Remote),
			rtt, p.BytesOut, p.BytesIn, sinceAgo(p.Since, time.Now()))
	}
	return nil
}

// byName keeps the items named name (one per namespace that has it);
// none is an error, so `get nodes NAME` exits 1 for an unknown node.
func byName(items []json.RawMessage, name string) ([]json.RawMessage, error) {
	var out []json.RawMessage
	for _, raw := range items {
		var o struct {
			Meta api.Meta `json:"metadata"`
		}
		if json.Unmarshal(raw, &o) == nil && o.Meta.Name == name {
			out = append(out, raw)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no %q", name)
	}
	return out, nil
}

// getCluster shows the Kubernetes source's last sync: its link, the
// conflicts with applied objects, and the bad input it left out.
func getCluster(server, out string) error {
	var st control.ClusterStatus
	if err := call("GET", strings.TrimRight(server, "/")+"/v1/cluster", nil, &st); err != nil {
		return err
	}
	switch out {
	case "json":
		b, _ := json.MarshalIndent(st, "", "  ")
		fmt.Println(string(jsonTermSafe(b)))
		return nil
	case "table":
	default:
		return cli.Usagef("get cluster: -o %q is not table or json", out)
	}
	if st.Source == "" {
		fmt.Println("no cluster source (fogmesh control -kube)")
		return nil
	}
	tfprintf(os.Stdout, "source: %s\nobjects: %d\nnodes: %d\nlast sync: %s\nlink: %s\n", st.Source, st.Objects, st.Nodes,
		sinceAgo(st.LastSync, time.Now()), cmpOr(st.Link, "ok"))
	for _, c := range st.Conflicts {
		tfprintf(os.Stdout, "CONFLICT %s\n", c)
	}
	for _, w := range st.Warnings {
		tfprintf(os.Stdout, "WARNING %s\n", w)
	}
	for _, m := range st.SiteMismatches {
		tfprintf(os.Stdout, "SITE %s\n", m)
	}
	return nil
}
