package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/fogmesh/fogmesh/internal/agent"
	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/cli"
	"github.com/fogmesh/fogmesh/internal/paths"
)

func runRegister(args []string) error {
	fs := flag.NewFlagSet("fogmesh register", flag.ContinueOnError)
	agentURL := agentFlag(fs)
	token := agentTokenFlag(fs)
	var w agent.Workload
	fs.StringVar(&w.Service, "service", "", "service name (required)")
	fs.StringVar(&w.Namespace, "n", "", "namespace (default \"default\")")
	fs.StringVar(&w.Name, "name", "", "endpoint name (default SERVICE-NODE)")
	fs.StringVar(&w.Address, "address", "", "address the instance listens on (default 127.0.0.1)")
	ports := fs.String("port", "", "ports as name=port[,name=port] (or just a port number)")
	fs.StringVar(&w.Check.Type, "check", "", "health check: tcp (default), http or none")
	fs.StringVar(&w.Check.Path, "check-path", "", "path for -check http")
	labels := fs.String("label", "", "labels as key=value[,key=value] (subsets select on them)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if w.Service == "" || *ports == "" {
		return cli.Usagef("register: -service and -port are required")
	}
	for _, p := range strings.Split(*ports, ",") {
		name, num, ok := strings.Cut(p, "=")
		if !ok {
			name, num = "", p
		}
		n, err := strconv.Atoi(num)
		if err != nil {
			return cli.Usagef("register: -port %q: %v", p, err)
		}
		w.Ports = append(w.Ports, api.EndpointPort{Name: name, Port: n})
	}
	for _, kv := range strings.Split(*labels, ",") {
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return cli.Usagef("register: -label %q: want key=value", kv)
		}
		if w.Labels == nil {
			w.Labels = map[string]string{}
		}
		w.Labels[k] = v
	}
	b, _ := json.Marshal(w)
	var resp map[string]string
	if err := callAgent("POST", strings.TrimRight(*agentURL, "/")+"/v1/workloads", token(), b, &resp); err != nil {
		return err
	}
	fmt.Printf("workload %s registered\n", resp["registered"])
	return nil
}

func runDeregister(args []string) error {
	fs := flag.NewFlagSet("fogmesh deregister", flag.ContinueOnError)
	agentURL := agentFlag(fs)
	token := agentTokenFlag(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return cli.Usagef("deregister: want NAME")
	}
	if err := callAgent("DELETE", strings.TrimRight(*agentURL, "/")+"/v1/workloads/"+fs.Arg(0), token(), nil, nil); err != nil {
		return err
	}
	fmt.Printf("workload %s deregistered\n", fs.Arg(0))
	return nil
}

func runRoutes(args []string) error {
	fs := flag.NewFlagSet("fogmesh routes", flag.ContinueOnError)
	agentURL := agentFlag(fs)
	out := fs.String("o", "table", "output: table or json")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	var routes []agent.RouteStatus
	if err := call("GET", strings.TrimRight(*agentURL, "/")+"/v1/routes", nil, &routes); err != nil {
		return err
	}
	if *out == "json" {
		b, _ := json.MarshalIndent(routes, "", "  ")
		fmt.Println(string(jsonTermSafe(b)))
		return nil
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	defer func() {
		tw.Flush()
		for _, r := range routes { // after the table: what to fix
			for _, f := range r.Unbound {
				fmt.Printf("NOT SERVED: %s of %s cannot be bound (first failed %s): %s; another process holds it\n", f.Address, r.Service, sinceAgo(f.Since, time.Now()), f.Error)
			}
		}
	}()
	fmt.Fprintln(tw, "SERVICE\tVIP\tPORTS\tENDPOINT\tNODE\tTIER\tHEALTHY\tEJECTED\tACTIVE")
	for _, r := range routes {
		if len(r.Endpoints) == 0 {
			fmt.Fprintf(tw, "%s\t%s\t%s\t-\t-\t-\t-\t-\t-\n", r.Service, r.VIP, strings.Join(r.Ports, ","))
		}
		for _, e := range r.Endpoints {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%v\t%v\t%d\n", r.Service, r.VIP, strings.Join(r.Ports, ","),
				e.Name, e.Node, e.Tier, e.Healthy, e.Ejected, e.Active)
		}
	}
	return nil
}

// runPaths prints the agent's path to each peer it talks to.
func runPaths(args []string) error {
	fs := flag.NewFlagSet("fogmesh paths", flag.ContinueOnError)
	agentURL := agentFlag(fs)
	out := fs.String("o", "table", "output: table or json")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	var st paths.Status
	if err := call("GET", strings.TrimRight(*agentURL, "/")+"/v1/paths", nil, &st); err != nil {
		return err
	}
	if *out == "json" {
		b, _ := json.MarshalIndent(st, "", "  ")
		fmt.Println(string(jsonTermSafe(b)))
		return nil
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tPATH\tCARRIER\tRELAY\tREMOTE\tRTT\tBYTES OUT\tBYTES IN\tSINCE")
	for _, p := range st.Paths {
		rtt := "-"
		if p.RTTMs > 0 {
			rtt = fmt.Sprintf("%.2fms", p.RTTMs)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", p.Peer, p.Kind, orDash(p.Carrier), orDash(p.Relay), orDash(p.Remote), rtt,
			p.BytesOut, p.BytesIn, sinceAt(p.Since))
	}
	tw.Flush()
	if len(st.Relays) > 0 {
		fmt.Println()
		tw = tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "RELAY\tCONNECTED\tHOME\tRTT\tSESSIONS\tLAST ERROR")
		for _, r := range st.Relays {
			fmt.Fprintf(tw, "%s\t%v\t%v\t%s\t%d\t%s\n", r.Addr, r.Connected, r.Home, r.SmoothedRTT.Round(10*time.Microsecond), r.Sessions, orDash(r.LastError))
		}
		tw.Flush()
	}
	if st.Punching {
		fmt.Printf("\npunching: on, candidates %s\n", strings.Join(st.Candidates, " "))
	} else {
		fmt.Printf("\npunching: off (%s)\n", st.PunchNote)
	}
	return nil
}

// sinceAgo is a path's age at now for tables; "-" when it is not known
// (the zero time).
func sinceAgo(since, now time.Time) string {
	if since.IsZero() {
		return "-"
	}
	return now.Sub(since).Round(time.Second).String() + " ago"
}

// sinceAt is a path's start for tables; "-" when it is not known.
func sinceAt(since time.Time) string {
	if since.IsZero() {
		return "-"
	}
	return since.Format(time.RFC3339)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func runDescribe(args []string) error {
	fs := flag.NewFlagSet("fogmesh describe", flag.ContinueOnError)
	agentURL := agentFlag(fs)
	ns := fs.String("n", "", "namespace (default: the one namespace that has a service NAME, else \"default\")")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 2 || kindAliases[fs.Arg(0)] != "services" {
		return cli.Usagef("describe: want service NAME")
	}
	var routes []agent.RouteStatus
	if err := call("GET", strings.TrimRight(*agentURL, "/")+"/v1/routes", nil, &routes); err != nil {
		return err
	}
	key, err := describeKey(routes, *ns, fs.Arg(1))
	if err != nil {
		return err
	}
	for _, r := range routes {
		if r.Service != key {
			continue
		}
		fmt.Printf("Service:   %s\nVIP:       %s %s\nNames:     %s\n", r.Service, r.VIP, r.VIP6, strings.Join(r.Names, " "))
		if len(r.ClusterIPs) > 0 {
			how := "not captured: connections to them go by kube-proxy (fogmesh routes the VIP and names); see the agent's /v1/status capture"
			if r.Captured {
				how = "captured: connections to them go through this agent"
			}
			fmt.Printf("ClusterIP: %s (%s)\n", strings.Join(r.ClusterIPs, " "), how)
		}
		fmt.Printf("Ports:     %s\nBalancer:  %s\n", strings.Join(r.Ports, ", "), r.Balancer)
		for _, f := range r.Unbound {
			fmt.Printf("NOT SERVED: %s cannot be bound (first failed %s): %s\n", f.Address, sinceAgo(f.Since, time.Now()), f.Error)
		}
		if len(r.Unbound) > 0 {
			fmt.Println("            another process holds it, so clients of this node would reach that process: stop it")
			fmt.Println("            (ss -lnp 'sport = :PORT' names it); the agent binds it again by itself, and its DNS")
			fmt.Println("            answers SERVFAIL for this service until then")
		}
		fmt.Println("Endpoints:")
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  NAME\tNODE\tADDRESS\tTIER\tHEALTHY\tEJECTED\tIN FLIGHT\tWEIGHT\tEWMA LATENCY")
		for _, e := range r.Endpoints {
			node := e.Node
			if node == "" {
				node = "(static)"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%v\t%v\t%d\t%.2f\t%.2fms\n", e.Name, node, e.Address, e.Tier, e.Healthy, e.Ejected, e.Active, e.Weight, e.LatencyMillis)
		}
		return tw.Flush()
	}
	return cli.Usagef("describe: service %s is not known to this agent", key)
}

// describeKey is the "ns/name" describe shows: with -n that namespace;
// without, "default" if it has the service, else the one namespace that
// has it, as the demo prints `describe service hello` for demo/hello.
// Several namespaces with the name are an error naming them.
func describeKey(routes []agent.RouteStatus, ns, name string) (string, error) {
	if ns != "" {
		return api.NamespaceOr(ns) + "/" + name, nil
	}
	def := api.NamespaceOr("") + "/" + name
	var found []string
	for _, r := range routes {
		if r.Service == def {
			return def, nil
		}
		if _, n, ok := strings.Cut(r.Service, "/"); ok && n == name {
			found = append(found, r.Service)
		}
	}
	switch len(found) {
	case 0:
		return def, nil // not known: the caller says so
	case 1:
		return found[0], nil
	}
	sort.Strings(found)
	return "", cli.Usagef("describe: service %s is in several namespaces (%s): give -n NAMESPACE", name, strings.Join(found, ", "))
}
