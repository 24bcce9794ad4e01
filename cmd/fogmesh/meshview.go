package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/control"
	"github.com/fogmesh/fogmesh/internal/meshstat"
	"github.com/fogmesh/fogmesh/internal/promtext"
)

// What check, stat and top read of the mesh: the control plane's node
// list, and each agent's local API at the adminAddress its node
// registered (or the -agents given).

// listNodes returns the control plane's nodes and the list's version
// (the store revision).
func listNodes(server string) ([]api.Node, uint64, error) {
	var resp control.ListResponse
	if err := call("GET", strings.TrimRight(server, "/")+"/v1/nodes", nil, &resp); err != nil {
		return nil, 0, err
	}
	nodes := make([]api.Node, 0, len(resp.Items))
	for _, raw := range resp.Items {
		var n api.Node
		if err := json.Unmarshal(raw, &n); err != nil {
			return nil, 0, fmt.Errorf("nodes: %w", err)
		}
		nodes = append(nodes, n)
	}
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].Meta.Name < nodes[j].Meta.Name })
	return nodes, resp.Version, nil
}

// agentHTTP talks to agents' local APIs (plain HTTP, loopback by default).
var agentHTTP = &http.Client{Timeout: 3 * time.Second}

// agentGet fetches path from the agent API at base (http://host:port).
func agentGet(ctx context.Context, base, path string) (*http.Response, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", strings.TrimRight(base, "/")+path, nil)
	if err != nil {
		return nil, nil, err
	}
	resp, err := agentHTTP.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		return resp, nil, fmt.Errorf("GET %s%s: %w", base, path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return resp, b, fmt.Errorf("GET %s%s: %s", base, path, resp.Status)
	}
	return resp, b, nil
}

// scrapeAgent reads one agent's /metrics.
func scrapeAgent(ctx context.Context, base string) (meshstat.Scrape, error) {
	_, b, err := agentGet(ctx, base, "/metrics")
	at := time.Now()
	if err != nil {
		return meshstat.Scrape{}, err
	}
	ss, err := promtext.Parse(strings.NewReader(string(b)))
	if err != nil {
		return meshstat.Scrape{}, fmt.Errorf("%s/metrics: %w", base, err)
	}
	return meshstat.Scrape{At: at, Samples: ss}, nil
}

// agentTargets maps a node name to its agent API base URL: the -agents
// list (name=URL or URL, named by its own /v1/status), else every ready
// node that registered an adminAddress.
func agentTargets(ctx context.Context, server, agents string) (map[string]string, error) {
	out := map[string]string{}
	if agents != "" {
		for _, a := range strings.Split(agents, ",") {
			a = strings.TrimSpace(a)
			if a == "" {
				continue
			}
			name, url, ok := strings.Cut(a, "=")
			if !ok {
				url = a
				var st struct {
					Node api.Node `json:"node"`
				}
				_, b, err := agentGet(ctx, url, "/v1/status")
				if err == nil {
					err = json.Unmarshal(b, &st)
				}
				if err != nil {
					return nil, fmt.Errorf("-agents: %s: %w", url, err)
				}
				name = st.Node.Meta.Name
			}
			if !strings.Contains(url, "://") {
				url = "http://" + url
			}
			out[name] = url
		}
		return out, nil
	}
	nodes, _, err := listNodes(server)
	if err != nil {
		return nil, err
	}
	for _, n := range nodes {
		if n.Status.Ready && n.Spec.AdminAddress != "" {
			out[n.Meta.Name] = "http://" + n.Spec.AdminAddress
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no ready node registered an agent API address (older agents?); name them with -agents URL,...")
	}
	return out, nil
}

// scrapeAll scrapes every target at once; unreachable ones are reported
// in errs by node.
func scrapeAll(ctx context.Context, targets map[string]string) (map[string]meshstat.Scrape, map[string]error) {
	type res struct {
		node string
		s    meshstat.Scrape
		err  error
	}
	ch := make(chan res, len(targets))
	for node, url := range targets {
		go func() {
			s, err := scrapeAgent(ctx, url)
			ch <- res{node, s, err}
		}()
	}
	got, errs := map[string]meshstat.Scrape{}, map[string]error{}
	for range targets {
		r := <-ch
		if r.err != nil {
			errs[r.node] = r.err
		} else {
			got[r.node] = r.s
		}
	}
	return got, errs
}
